// A real OpenID provider for Qleet's tests, built on the `oidc-provider` npm package.
//
//   OIDC_PORT=0 OIDC_CLIENTS='[{"client_id":"qleet","client_secret":"s3cret","redirect_uris":["http://127.0.0.1:3000/auth/callback"]}]' \
//     node tests/oidc/provider.mjs
//
// Environment:
//   OIDC_PORT        port on 127.0.0.1 (0 or unset = pick a free one)
//   OIDC_CLIENTS     JSON array of {client_id, client_secret, redirect_uris, ...}; any other client
//                    metadata given (e.g. token_endpoint_auth_method, post_logout_redirect_uris) is
//                    passed through to oidc-provider
//   OIDC_IGNORE_STDIN=1  do not exit when stdin closes (for running it by hand in the background)
//
// Prints exactly one line to stdout, `READY http://127.0.0.1:PORT` (the issuer), once it listens;
// everything else (oidc-provider's notices and warnings, errors) goes to stderr. Exits when stdin
// closes, so a test harness that dies does not leave it running.
//
// Login: the package's development interactions (`/interaction/UID`): any login name and any
// password. The account's `sub` is the login name; `email` is `<login>@example.test`, or the login
// itself when it contains '@'; `email_verified` is true.
//
// Test control (for negative tests of the relying party):
//   POST /__test/mode {"mode": "normal" | "wrong_audience" | "expired" | "bad_signature"
//                              | "wrong_issuer" | "wrong_nonce"}
//   GET  /__test/mode → {"mode": "..."}
// Until changed, the token endpoint's `id_token` is the real one with its claims altered and
// re-signed (see tamper() below).

import * as http from 'node:http';
import { randomBytes } from 'node:crypto';

// oidc-provider writes its NOTICEs with console.info, i.e. to stdout. Keep stdout for the READY
// line alone; send all console output to stderr. Done before oidc-provider is loaded.
console.log = console.error;
console.info = console.error;

const { default: Provider } = await import('oidc-provider');
const jose = await import('jose');

const MODES = new Set(['normal', 'wrong_audience', 'expired', 'bad_signature', 'wrong_issuer', 'wrong_nonce']);

function fail(msg) {
  console.error(`oidc test provider: ${msg}`);
  process.exit(2);
}

// ---------- configuration from the environment ----------

const port = Number.parseInt(process.env.OIDC_PORT ?? '0', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad OIDC_PORT ${process.env.OIDC_PORT}`);

let clientsIn;
try {
  clientsIn = JSON.parse(process.env.OIDC_CLIENTS ?? '[]');
} catch (e) {
  fail(`OIDC_CLIENTS is not JSON: ${e.message}`);
}
if (!Array.isArray(clientsIn) || clientsIn.length === 0) {
  fail('OIDC_CLIENTS must be a non-empty JSON array of {client_id, client_secret, redirect_uris}');
}
const clients = clientsIn.map((c, i) => {
  if (typeof c?.client_id !== 'string' || typeof c?.client_secret !== 'string'
      || !Array.isArray(c?.redirect_uris) || c.redirect_uris.length === 0) {
    fail(`OIDC_CLIENTS[${i}] needs client_id, client_secret (strings) and redirect_uris (non-empty array)`);
  }
  return {
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    ...c,
  };
});

// ---------- keys ----------

// The provider's RS256 signing key, made fresh at every start.
const kid = `test-${randomBytes(6).toString('hex')}`;
const { privateKey: signingKey } = await jose.generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(signingKey)), kid, alg: 'RS256', use: 'sig' };
// A different key under the same kid, for the bad_signature mode.
const { privateKey: impostorKey } = await jose.generateKeyPair('RS256');

// ---------- accounts ----------

function claimsFor(login) {
  const email = login.includes('@') ? login : `${login}@example.test`;
  return {
    sub: login,
    email,
    email_verified: true,
    name: login,
    preferred_username: login,
  };
}

// ---------- listen first, so the issuer can name the real port ----------

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingJwk] },
  cookies: { keys: [randomBytes(32).toString('hex'), randomBytes(32).toString('hex')] },
  pkce: { required: () => true }, // oidc-provider 9 supports S256 only
  features: {
    devInteractions: { enabled: true },
  },
  scopes: ['openid', 'email', 'profile', 'offline_access'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
  },
  // Put scope-requested claims (email) in the ID token too, not only at the userinfo endpoint.
  conformIdTokenClaims: false,
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return claimsFor(sub);
      },
    };
  },
});

// Errors a test author wants to see (they go to stderr, which the Rust harness captures).
provider.on('server_error', (_ctx, err) => console.error('oidc server_error:', err));
provider.on('grant.error', (_ctx, err) => console.error('oidc grant.error:', err.message, err.error_description ?? ''));
provider.on('authorization.error', (_ctx, err) => console.error('oidc authorization.error:', err.message, err.error_description ?? ''));

// ---------- test modes ----------

let mode = 'normal';

async function tamper(idToken) {
  const header = jose.decodeProtectedHeader(idToken);
  const claims = jose.decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  let key = signingKey;
  switch (mode) {
    case 'wrong_audience': claims.aud = 'someone-else'; break;
    case 'expired': claims.exp = now - 600; claims.iat = now - 1200; break;
    case 'wrong_issuer': claims.iss = 'http://evil.test'; break;
    case 'wrong_nonce': claims.nonce = 'not-the-nonce-you-sent'; break;
    case 'bad_signature': key = impostorKey; break;
    default: return idToken;
  }
  return new jose.SignJWT(claims).setProtectedHeader(header).sign(key);
}

provider.use(async (ctx, next) => {
  await next();
  if (mode !== 'normal' && ctx.oidc?.route === 'token' && ctx.status === 200
      && ctx.body && typeof ctx.body.id_token === 'string') {
    ctx.body = { ...ctx.body, id_token: await tamper(ctx.body.id_token) };
  }
});

function testControl(req, res) {
  const reply = (status, obj) => {
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(JSON.stringify(obj));
  };
  if (req.url !== '/__test/mode') return reply(404, { error: 'not_found' });
  if (req.method === 'GET') return reply(200, { mode });
  if (req.method !== 'POST') return reply(405, { error: 'method_not_allowed' });
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (chunk) => { body += chunk; });
  req.on('end', () => {
    let wanted;
    try {
      wanted = JSON.parse(body).mode;
    } catch {
      return reply(400, { error: 'body must be JSON {"mode": "..."}' });
    }
    if (!MODES.has(wanted)) return reply(400, { error: `unknown mode ${JSON.stringify(wanted)}`, modes: [...MODES] });
    mode = wanted;
    console.error(`oidc test provider: mode = ${mode}`);
    return reply(200, { mode });
  });
  return undefined;
}

const providerHandler = provider.callback();
server.on('request', (req, res) => {
  if (req.url.startsWith('/__test/')) return testControl(req, res);
  return providerHandler(req, res);
});

// ---------- lifecycle ----------

function shutdown() {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (process.env.OIDC_IGNORE_STDIN !== '1') {
  process.stdin.on('end', shutdown);
  process.stdin.on('close', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}

process.stdout.write(`READY ${issuer}\n`);
