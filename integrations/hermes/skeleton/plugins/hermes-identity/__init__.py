"""Tells the agent who is typing, on every turn.

hermes-ssh-gateway starts Hermes with the signed-in person in its environment:
``HERMES_DASHBOARD_USER_ID`` always, ``HERMES_DASHBOARD_USER_NAME`` and
``HERMES_DASHBOARD_USER_EMAIL`` when the operator maps them from verified claims
(``[session] claims_env``). Hermes' ``pre_llm_call`` hook adds the returned
``context`` to the user message of the turn, so the model knows whom it serves.

Without ``HERMES_DASHBOARD_USER_ID`` (a plain local ``hermes``) it adds nothing.
Only the documented plugin API is used: ``register(ctx)`` and
``ctx.register_hook``.
"""

import os

# One short line: values come from an identity provider, so they are cut to a
# sane length and kept on one line.
_MAX = 200


def _clean(value):
    if not value:
        return ""
    text = " ".join(str(value).split())
    text = "".join(ch for ch in text if ch.isprintable())
    return text[:_MAX]


def identity_line(environ=os.environ):
    """The sentence for the current user, or None when there is none."""
    user_id = _clean(environ.get("HERMES_DASHBOARD_USER_ID"))
    if not user_id:
        return None
    details = [
        d
        for d in (
            _clean(environ.get("HERMES_DASHBOARD_USER_NAME")),
            _clean(environ.get("HERMES_DASHBOARD_USER_EMAIL")),
        )
        if d
    ]
    if details:
        return f"The signed-in user is {user_id} ({', '.join(details)})."
    return f"The signed-in user is {user_id}."


def _pre_llm_call(**_kwargs):
    line = identity_line()
    if line is None:
        return None
    return {"context": line}


def register(ctx):
    ctx.register_hook("pre_llm_call", _pre_llm_call)
