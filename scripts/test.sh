#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what the tests need that a fresh machine (Rust,
# Node.js, the OpenSSH client) lacks, then runs format and lint checks and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  if need apt-get; then
    echo "installing $* (Debian packages)" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "missing: $* (install them with your package manager)" >&2
    exit 1
  fi
}

# The tests drive the real OpenSSH client tools.
need ssh && need ssh-keygen && need ssh-agent && need sftp || apt_install openssh-client

# The test identity provider (npm oidc-provider, pinned by tests/idp/package-lock.json).
need node && need npm || apt_install nodejs npm
(cd tests/idp && npm ci --no-audit --no-fund --loglevel=error)

# A real Redis for the multi-node tests (started privately by the tests on loopback ports).
need redis-server || apt_install redis-server

# OpenSSH's sshd for the benchmark harness check (bench/run.sh compares against it). The
# package starts a system sshd on port 22; the harness runs its own, so stop that one.
if [ ! -x /usr/sbin/sshd ]; then
  apt_install openssh-server
  (systemctl stop ssh || service ssh stop || true) >/dev/null 2>&1
fi

# Per-user accounts and limits (tests/accounts.rs, run as root): useradd/userdel, setpriv to
# run the gateway as nobody, pgrep/pkill to count and clean up an account's processes.
need useradd && need userdel || apt_install passwd
need setpriv || apt_install util-linux
need pgrep && need pkill || apt_install procps
# Network namespaces with several IPv6 client addresses (tests/hostile.rs, per-network limits).
need ip || apt_install iproute2

# Debian's HAProxy in front of two gateway nodes (tests/proxy_protocol.rs, PROXY protocol).
need haproxy || apt_install haproxy

# Debian's Chromium for the browser test (playwright-core drives it; it downloads no browser).
[ -x /usr/bin/chromium ] || apt_install chromium

# The sandbox tests run the tools a program would, by absolute path: Debian's python3.
[ -x /usr/bin/python3 ] || apt_install python3

# The real Hermes TUI (tests/hermes.rs): PyPI hermes-agent, pinned, in a virtualenv under
# target/ (a clean clone installs it once; about 230 MB). Made from Debian's /usr/bin/python3, so
# that per-user accounts (run_as) can execute it too (a pyenv Python under root's home cannot).
HERMES_VENV=target/hermes-agent-0.19.0
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
rm -f "$HERMES_VENV.unavailable"
if [ ! -x "$HERMES_VENV/bin/hermes" ] || ! grep -q '^home = /usr/bin$' "$HERMES_VENV/pyvenv.cfg"; then
  echo "installing hermes-agent 0.19.0 into $HERMES_VENV (PyPI)" >&2
  rm -rf "$HERMES_VENV"
  /usr/bin/python3 -m venv "$HERMES_VENV"
  if ! "$HERMES_VENV/bin/pip" install -q --disable-pip-version-check hermes-agent==0.19.0; then
    # Only an unreachable registry excuses the real-Hermes tests (they say so and skip); any
    # other install failure fails the suite.
    if "$HERMES_VENV/bin/python" -c 'import urllib.request; urllib.request.urlopen("https://pypi.org/simple/hermes-agent/", timeout=20)' 2>/dev/null; then
      echo "hermes-agent 0.19.0 failed to install although PyPI answers" >&2
      exit 1
    fi
    rm -rf "$HERMES_VENV"
    echo "PyPI (https://pypi.org) was unreachable at $(date -u +%FT%TZ)" > "$HERMES_VENV.unavailable"
  fi
fi

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets "$@"
# Nothing a test started may outlive the suite (programs, gateways, IdP, Redis, browsers).
./scripts/leftovers.sh
