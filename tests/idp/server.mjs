// A real OpenID provider for the gateway's tests: oidc-provider on 127.0.0.1, two users, the
// device grant for a public client, and a few test-only controls.
//
// Usage: node server.mjs            (env: PORT=0, INTERVAL=1, DEVICE_TTL=600, REDIRECT_URIS=a,b)
// Prints one JSON line {"issuer": "http://127.0.0.1:PORT"} on stdout once it listens.
//
// Test controls (plain HTTP, JSON):
//   POST /test/config {"slow_down": N, "token_mode": "normal|foreign_aud|foreign_key|alg_none|hs256_pubkey",
//                      "vendor": "standard|google|entra|okta", "tenant": "…", "token_delay_ms": N}
//        slow_down: answer the next N token requests with `slow_down`
//        token_mode: rewrite the ID token of the next token responses (to test the gateway's checks)
//        vendor: behave as that vendor's device flow is documented to (VENDOR=… at start too):
//          google: `verification_url` instead of `verification_uri`, no `verification_uri_complete`
//                  (the client must be the confidential one: polling needs the client secret);
//          entra:  no `verification_uri_complete`, a `message` field, and the multi-tenant
//                  issuer: /common/v2.0/.well-known/openid-configuration says
//                  issuer "…/{tenantid}/v2.0", ID tokens carry iss "…/<tenant>/v2.0" and `tid`;
//          okta:   (also Keycloak, Authentik, Dex) groups only in the custom claim
//                  `hermes_groups`, `verification_uri_complete` present;
//        tenant: the `tid` of Entra-mode ID tokens (default "11111111-2222-3333-4444-555555555555")
//        token_delay_ms: every token response is held this long (a slow token endpoint)
//   GET  /test/polls  -> {"count": N, "times": [ms since epoch, ...]} token requests seen
//   POST /test/users {"user": "alice", "groups": [...], "disabled": true|false}
//        changes a user as an IdP admin would (a disabled user is unknown to every grant)
//   GET  /interaction/:uid -> {"uid", "prompt"};  POST /interaction/:uid/login (form: login=alice)
//        logs the user in and grants the requested scopes (login and consent in one step).
//
// oidc-provider omits `interval` from the device authorization response and never sends
// `slow_down` by itself; the middleware below adds both so the gateway's polling is exercised.

import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const PORT = Number(process.env.PORT || 0);
// INTERVAL=0: the device authorization response has no `interval` (as oidc-provider's own).
const INTERVAL = Number(process.env.INTERVAL ?? 1);
const DEVICE_TTL = Number(process.env.DEVICE_TTL || 600);
const REDIRECT_URIS = (process.env.REDIRECT_URIS || 'http://127.0.0.1/unused').split(',');

const USERS = {
  alice: {
    email: 'alice@example.com', email_verified: true, name: 'Alice Example',
    preferred_username: 'alice', groups: ['hermes-users', 'staff'],
  },
  bob: {
    email: 'bob@other.org', email_verified: true, name: 'Bob Other',
    preferred_username: 'bob', groups: ['staff'],
  },
  carol: {
    email: 'carol@example.com', email_verified: false, name: 'Carol Unverified',
    preferred_username: 'carol', groups: ['hermes-users'],
  },
};

const state = {
  slowDown: 0, tokenMode: 'normal', polls: [], vendor: process.env.VENDOR || 'standard',
  tenant: '11111111-2222-3333-4444-555555555555', tokenDelayMs: 0,
};
const disabled = new Set();

const { privateKey, publicKey } = await jose.generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(privateKey)), kid: `test-key-${crypto.randomBytes(4).toString('hex')}`, alg: 'RS256', use: 'sig' };
const foreign = await jose.generateKeyPair('RS256', { extractable: true });
const publicPem = await jose.exportSPKI(publicKey);

const server = http.createServer();
await new Promise((resolve) => server.listen(PORT, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'hermes-gateway',
      token_endpoint_auth_method: 'none',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: REDIRECT_URIS,
    },
    {
      client_id: 'hermes-confidential',
      client_secret: 'test-secret-please-change',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: REDIRECT_URIS,
    },
  ],
  jwks: { keys: [signingJwk] },
  features: {
    deviceFlow: { enabled: true },
    devInteractions: { enabled: false },
    userinfo: { enabled: true },
  },
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  // Puts the scope's claims (email, groups, …) into the ID token, as many IdPs do.
  conformIdTokenClaims: false,
  ttl: { DeviceCode: DEVICE_TTL, AccessToken: 3600, IdToken: 3600, Interaction: 3600, Session: 3600, Grant: 3600 },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: (ctx, id) => (USERS[id] && !disabled.has(id) ? { accountId: id, claims: () => ({ sub: id, ...USERS[id] }) } : undefined),
  pkce: { required: () => false },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  renderError: (ctx, out) => { ctx.type = 'json'; ctx.body = out; },
});
provider.proxy = false;

function readBody(req) {
  return new Promise((resolve) => {
    let data = '';
    req.on('data', (c) => { data += c; });
    req.on('end', () => resolve(data));
  });
}

function b64url(buf) { return Buffer.from(buf).toString('base64url'); }

async function rewriteIdToken(idToken, mode) {
  const [h, p] = idToken.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  const payload = JSON.parse(Buffer.from(p, 'base64url'));
  switch (mode) {
    case 'foreign_aud':
      return new jose.SignJWT({ ...payload, aud: 'some-other-client', azp: 'some-other-client' })
        .setProtectedHeader(header).sign(privateKey);
    case 'foreign_key':
      // Same kid as the real key: only the signature can tell it apart.
      return new jose.SignJWT(payload).setProtectedHeader(header).sign(foreign.privateKey);
    case 'alg_none':
      return `${b64url(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${p}.`;
    case 'hs256_pubkey': {
      const hh = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT', kid: header.kid }));
      const sig = crypto.createHmac('sha256', publicPem).update(`${hh}.${p}`).digest();
      return `${hh}.${p}.${b64url(sig)}`;
    }
    case 'expired':
      return new jose.SignJWT({ ...payload, exp: Math.floor(Date.now() / 1000) - 3600, iat: Math.floor(Date.now() / 1000) - 7200 })
        .setProtectedHeader(header).sign(privateKey);
    default:
      return idToken;
  }
}

// The ID token as the vendor shapes it, signed again with the provider's key.
async function vendorIdToken(idToken) {
  const [h, p] = idToken.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  const payload = JSON.parse(Buffer.from(p, 'base64url'));
  if (state.vendor === 'entra') {
    payload.iss = `${issuer}/${state.tenant}/v2.0`;
    payload.tid = state.tenant;
  }
  if (state.vendor === 'okta' && payload.groups) {
    payload.hermes_groups = payload.groups;
    delete payload.groups;
  }
  return new jose.SignJWT(payload).setProtectedHeader(header).sign(privateKey);
}

provider.use(async (ctx, next) => {
  // Test controls.
  if (ctx.path === '/test/config' && ctx.method === 'POST') {
    const cfg = JSON.parse((await readBody(ctx.req)) || '{}');
    if (cfg.slow_down !== undefined) state.slowDown = Number(cfg.slow_down);
    if (cfg.token_mode !== undefined) state.tokenMode = String(cfg.token_mode);
    if (cfg.vendor !== undefined) state.vendor = String(cfg.vendor);
    if (cfg.tenant !== undefined) state.tenant = String(cfg.tenant);
    if (cfg.token_delay_ms !== undefined) state.tokenDelayMs = Number(cfg.token_delay_ms);
    ctx.body = { ok: true };
    return;
  }
  if (ctx.path === '/test/users' && ctx.method === 'POST') {
    const change = JSON.parse((await readBody(ctx.req)) || '{}');
    const user = USERS[change.user];
    if (!user) {
      ctx.status = 400;
      ctx.body = { error: 'unknown user' };
      return;
    }
    if (Array.isArray(change.groups)) user.groups = change.groups.map(String);
    if (change.disabled === true) disabled.add(change.user);
    if (change.disabled === false) disabled.delete(change.user);
    ctx.body = { ok: true };
    return;
  }
  if (ctx.path === '/test/polls') {
    ctx.body = { count: state.polls.length, times: state.polls };
    return;
  }

  // Login + consent in one step, driven by plain HTTP from the tests.
  const m = ctx.path.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (m) {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (!m[2]) {
      if (String(ctx.get('accept')).includes('text/html')) {
        // A minimal login form for real browsers.
        ctx.type = 'html';
        ctx.body = `<!doctype html><html><body><h1>Test IdP login</h1>
<form method="post" action="/interaction/${details.uid}/login">
<input id="login" name="login" placeholder="user name"><button id="submit" type="submit">Sign in</button>
</form></body></html>`;
        return;
      }
      ctx.body = { uid: details.uid, prompt: details.prompt.name, client_id: details.params.client_id };
      return;
    }
    const form = new URLSearchParams(await readBody(ctx.req));
    const accountId = form.get('login');
    if (!USERS[accountId]) {
      ctx.status = 400;
      ctx.body = { error: 'unknown user' };
      return;
    }
    const grant = new provider.Grant({ accountId, clientId: details.params.client_id });
    grant.addOIDCScope(details.params.scope || 'openid');
    const grantId = await grant.save();
    await provider.interactionFinished(ctx.req, ctx.res, { login: { accountId }, consent: { grantId } }, { mergeWithLastSubmission: false });
    ctx.respond = false;
    return;
  }

  // Entra's multi-tenant discovery: the issuer is a template the tenant fills in.
  if (state.vendor === 'entra' && ctx.path === '/common/v2.0/.well-known/openid-configuration') {
    const own = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
    ctx.body = { ...own, issuer: `${issuer}/{tenantid}/v2.0` };
    return;
  }

  // Every token request counts as a poll: in the tests only the gateway's device-code polls
  // reach /token while a device flow runs (reading the body here would consume it).
  if (ctx.path === '/token' && ctx.method === 'POST') {
    state.polls.push(Date.now());
    if (state.tokenDelayMs > 0) await new Promise((r) => setTimeout(r, state.tokenDelayMs));
    if (state.slowDown > 0) {
      state.slowDown -= 1;
      ctx.status = 400;
      ctx.body = { error: 'slow_down', error_description: 'polling too fast (test)' };
      return;
    }
  }

  await next();

  if (ctx.path === '/device/auth' && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
    const body = { ...ctx.body };
    if (INTERVAL > 0) body.interval = INTERVAL;
    if (state.vendor === 'google') {
      body.verification_url = body.verification_uri;
      delete body.verification_uri;
      delete body.verification_uri_complete;
    }
    if (state.vendor === 'entra') {
      delete body.verification_uri_complete;
      body.message = `To sign in, use a web browser to open the page ${body.verification_uri} and enter the code ${body.user_code} to authenticate.`;
    }
    ctx.body = body;
  }
  if (ctx.path === '/token' && ctx.status === 200 && ctx.body && ctx.body.id_token) {
    let idToken = ctx.body.id_token;
    if (state.tokenMode !== 'normal') idToken = await rewriteIdToken(idToken, state.tokenMode);
    if (state.vendor === 'entra' || state.vendor === 'okta') idToken = await vendorIdToken(idToken);
    ctx.body = { ...ctx.body, id_token: idToken };
  }
});

server.on('request', provider.callback());
process.stdout.write(`${JSON.stringify({ issuer })}\n`);
process.on('SIGTERM', () => process.exit(0));
