// The development and test authorization server: the real oidc-provider package with
// the clients, scopes and features Intercom uses. Started by `scripts/dev` and by the
// test harness (tests/api/helpers), each time on a free port given in PORT.
//
// Besides the standard endpoints it serves a few test-only ones under /__test/ (never
// part of a production AS): call counters, so tests can assert how many introspections
// and exchanges Intercom made, and a direct way to mint user tokens with a chosen
// lifetime (the alternative, driving a browser login, tests nothing of Intercom).
import Provider, { errors } from 'oidc-provider';
import { readFileSync } from 'node:fs';
import { generateKeyPairSync, createPrivateKey, randomUUID, sign as cryptoSign } from 'node:crypto';

const port = Number(process.env.PORT || 9400);
const host = process.env.HOST || '127.0.0.1';
const issuer = process.env.ISSUER || `http://${host}:${port}`;
const exchangeGrant = 'urn:ietf:params:oauth:grant-type:token-exchange';
const accessTokenType = 'urn:ietf:params:oauth:token-type:access_token';

const defaultClients = [
  {
    // Intercom's own client: introspection, token exchange, client credentials.
    client_id: 'intercom',
    client_secret: 'intercom-dev-secret',
    grant_types: ['client_credentials', exchangeGrant],
    response_types: [],
    redirect_uris: [],
    scope: 'invoice_read invoice_write orders_read orders_write profile',
    // RFC 9701: signed introspection answers when asked with Accept.
    introspection_signed_response_alg: 'RS256',
  },
  {
    // An external client with coarse API scopes.
    client_id: 'app',
    client_secret: 'app-dev-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'invoice_read invoice_write orders_read profile',
  },
  {
    // A read-only client, for insufficient-scope answers.
    client_id: 'reader',
    client_secret: 'reader-dev-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'invoice_read',
  },
];
// BFF_BASE (the base URLs, space-separated, of the Intercoms that log browsers in, e.g.
// http://127.0.0.1:8080): Intercom's client also logs users in there with the code
// flow, gets refresh tokens, and hears back-channel logouts at the first.
const bffBases = (process.env.BFF_BASE || 'http://127.0.0.1:8080').split(' ').filter(Boolean);
const bffBase = bffBases[0];
Object.assign(defaultClients[0], {
  grant_types: [...defaultClients[0].grant_types, 'authorization_code', 'refresh_token'],
  response_types: ['code'],
  redirect_uris: bffBases.map((b) => `${b}/auth/callback`),
  post_logout_redirect_uris: [`${bffBase}/`, `${bffBase}/public/logged-out`],
  backchannel_logout_uri: `${bffBase}/backchannel-logout`,
  // ID tokens carry `sid`, and logout tokens name it.
  backchannel_logout_session_required: true,
  scope: `${defaultClients[0].scope} openid offline_access email`,
});
// BFF_CLIENT_JWKS (a JSON JWK set of public keys): a second login client,
// `intercom-pkjwt`, that authenticates with private_key_jwt (RFC 7523) under those keys.
if (process.env.BFF_CLIENT_JWKS) {
  defaultClients.push({
    client_id: 'intercom-pkjwt',
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: JSON.parse(process.env.BFF_CLIENT_JWKS),
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: bffBases.map((b) => `${b}/auth/callback`),
    post_logout_redirect_uris: [`${bffBase}/`],
    scope: 'openid offline_access profile email',
  });
}
const clients = process.env.CLIENTS_FILE
  ? JSON.parse(readFileSync(process.env.CLIENTS_FILE, 'utf8'))
  : defaultClients;

// Faults the tests switch on at run time (/__test/hooks).
const hooks = { tokenDelayMs: 0, idTokenFault: undefined };

const counts = { introspection: 0, exchange: 0, actor: 0, token: 0, revocation: 0, revocation_ok: 0, jwks: 0, refresh: 0, refresh_refused: 0, backchannel_logout: 0 };

// SIGNING_KID: sign with a fresh RSA key under this kid instead of the development key
// (for tests that need an AS whose keys differ).
const jwks = process.env.SIGNING_KID
  ? {
      keys: [{
        ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
        kid: process.env.SIGNING_KID,
        alg: 'RS256',
        use: 'sig',
      }],
    }
  : undefined;

// oidc-provider's quick-start memory adapter keeps only 1,000 entries (LRU), so a
// benchmark holding more tokens saw active tokens vanish. This one keeps every entry
// until it expires (swept each minute). Development and tests only.
const store = new Map();
class MapAdapter {
  constructor(model) { this.model = model; }
  key(id) { return `${this.model}:${id}`; }
  async upsert(id, payload, expiresIn) {
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    store.set(this.key(id), { payload, expiresAt });
    if (payload.grantId) {
      const grant = `grant:${payload.grantId}`;
      store.set(grant, { payload: [...(store.get(grant)?.payload || []), this.key(id)], expiresAt: Infinity });
    }
    if (payload.uid) store.set(`uid:${payload.uid}`, { payload: id, expiresAt });
    if (payload.userCode) store.set(`userCode:${payload.userCode}`, { payload: id, expiresAt });
  }
  async find(id) { return MapAdapter.live(this.key(id)); }
  async findByUid(uid) { const id = MapAdapter.live(`uid:${uid}`); return id && this.find(id); }
  async findByUserCode(code) { const id = MapAdapter.live(`userCode:${code}`); return id && this.find(id); }
  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }
  async destroy(id) { store.delete(this.key(id)); }
  async revokeByGrantId(grantId) {
    for (const key of store.get(`grant:${grantId}`)?.payload || []) store.delete(key);
    store.delete(`grant:${grantId}`);
  }
  static live(key) {
    const entry = store.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) { store.delete(key); return undefined; }
    return entry.payload;
  }
}
setInterval(() => {
  const now = Date.now();
  for (const [key, entry] of store) if (entry.expiresAt <= now) store.delete(key);
}, 60_000).unref();

// The `plan` claim (a rate-limit tier) of each client's client-credentials tokens;
// user tokens from /__test/token take theirs from ?plan=.
const clientPlans = { app: 'pro', reader: 'free' };

const provider = new Provider(issuer, {
  adapter: MapAdapter,
  clients,
  // What this returns replaces a token's `extra`, so the claims set at construction
  // (a test token's plan, an exchanged token's act) are passed through.
  extraTokenClaims: async (ctx, token) => {
    const extra = { ...(token.extra || {}) };
    if (!extra.plan && token.kind === 'ClientCredentials' && clientPlans[token.clientId]) {
      extra.plan = clientPlans[token.clientId];
    }
    return Object.keys(extra).length ? extra : undefined;
  },
  ...(jwks ? { jwks } : {}),
  scopes: ['openid', 'offline_access', 'profile', 'email', 'invoice_read', 'invoice_write', 'orders_read', 'orders_write'],
  // Browser logins: every user exists (dev interactions take any name and password),
  // consent is implied, refresh tokens are issued to clients allowed the grant and are
  // rotated at each use (a reused one is refused, invalid_grant, and ends the grant).
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, name: `User ${id}`, email: `${id}@example.test` }),
  }),
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid profile email offline_access');
    grant.addOIDCClaims(['sub', 'name', 'email', 'sid']);
    await grant.save();
    return grant;
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  // The ID token carries the profile and email claims (a BFF shows them to its SPA).
  conformIdTokenClaims: false,
  // Back-channel logouts go to an Intercom on loopback, which oidc-provider's SSRF
  // guard refuses; this AS only ever calls the test's own processes.
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  claims: { openid: ['sub'], profile: ['name'], email: ['email'] },
  features: {
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    jwtIntrospection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => false,
      getResourceServerInfo: (ctx, resourceIndicator) => ({
        scope: 'invoice_read invoice_write orders_read orders_write profile',
        audience: resourceIndicator,
        accessTokenTTL: Number(process.env.TOKEN_TTL || 600),
        // Resource indicators containing "jwt" get JWT access tokens (RFC 9068).
        accessTokenFormat: resourceIndicator.includes('jwt') ? 'jwt' : 'opaque',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  ttl: {
    ClientCredentials: Number(process.env.TOKEN_TTL || 600),
    AccessToken: Number(process.env.TOKEN_TTL || 600),
  },
});
provider.proxy = false;
// Refreshes that succeeded and that were refused (a reused rotated token among them).
provider.on('grant.success', (ctx) => {
  if (ctx.oidc.params.grant_type === 'refresh_token') counts.refresh += 1;
});
provider.on('grant.error', (ctx) => {
  if (ctx.oidc.params?.grant_type === 'refresh_token') counts.refresh_refused += 1;
});
provider.on('backchannel.success', () => { counts.backchannel_logout += 1; });
provider.on('backchannel.error', (ctx, err) => {
  console.log(JSON.stringify({ event: 'backchannel.error', error: String(err), cause: String(err?.cause) }));
});

// RFC 8693 token exchange. The subject token must be an active token of this AS; the
// requested scope must be a subset of the subject's (else invalid_scope); the result
// names the audience and carries `act` for the calling client.
provider.registerGrantType(
  exchangeGrant,
  async (ctx) => {
    counts.exchange += 1;
    console.log(JSON.stringify({ event: 'exchange', n: counts.exchange }));
    const params = ctx.oidc.params;
    if (params.subject_token_type !== accessTokenType) {
      throw new errors.InvalidRequest('unsupported subject_token_type');
    }
    const subject =
      (await provider.AccessToken.find(params.subject_token)) ||
      (await provider.ClientCredentials.find(params.subject_token));
    if (!subject || subject.isExpired) {
      throw new errors.InvalidGrant('subject token is invalid or expired');
    }
    // An actor token (RFC 8693 §2.1) must be an active token; `act` then names its client.
    let actor = ctx.oidc.client.clientId;
    if (params.actor_token) {
      const actorToken =
        (await provider.ClientCredentials.find(params.actor_token)) ||
        (await provider.AccessToken.find(params.actor_token));
      if (!actorToken || actorToken.isExpired || params.actor_token_type !== accessTokenType) {
        throw new errors.InvalidGrant('actor token is invalid or expired');
      }
      counts.actor += 1;
      actor = actorToken.clientId;
    }
    const have = new Set((subject.scope || '').split(' ').filter(Boolean));
    const asked = (params.scope || '').split(' ').filter(Boolean);
    if (asked.some((s) => !have.has(s))) {
      throw new errors.InvalidScope('requested scope exceeds the subject token', params.scope);
    }
    const audience = params.audience || params.resource;
    if (audience && audience.includes('forbidden')) {
      throw new errors.InvalidTarget('this audience is not served');
    }
    const token = new provider.ClientCredentials({
      client: ctx.oidc.client,
      scope: (asked.length ? asked : [...have]).join(' ') || undefined,
      extra: {
        sub: subject.accountId || subject.clientId,
        act: { sub: actor },
        orig_client_id: subject.clientId,
      },
    });
    if (audience) token.aud = audience;
    if (process.env.EXCHANGE_TTL) token.expiresIn = Number(process.env.EXCHANGE_TTL);
    const value = await token.save();
    ctx.body = {
      access_token: value,
      issued_token_type: accessTokenType,
      token_type: 'Bearer',
      expires_in: token.expiration,
      scope: token.scope,
    };
  },
  ['subject_token', 'subject_token_type', 'audience', 'resource', 'scope', 'requested_token_type', 'actor_token', 'actor_token_type'],
  ['audience', 'resource'],
);

// Counters and test-only helpers, before the provider's own routes.
provider.use(async (ctx, next) => {
  if (ctx.path === '/__test/stats' && ctx.method === 'GET') {
    ctx.body = counts;
    return;
  }
  if (ctx.path === '/__test/pid' && ctx.method === 'GET') {
    // The harness checks that the server on its port is its own child.
    ctx.body = { pid: process.pid };
    return;
  }
  if (ctx.path === '/__test/hooks' && ctx.method === 'POST') {
    // ?token_delay_ms=2500: every token request waits that long (a slow AS);
    // ?id_token_fault=aud|nonce|iss|expired (needs SIGNING_KID): token answers carry an
    // ID token validly signed yet wrong in that claim. An empty value clears a hook.
    const q = ctx.query;
    if (q.token_delay_ms !== undefined) hooks.tokenDelayMs = Number(q.token_delay_ms) || 0;
    if (q.id_token_fault !== undefined) hooks.idTokenFault = q.id_token_fault || undefined;
    ctx.body = hooks;
    return;
  }
  if (ctx.path === '/__test/reset' && ctx.method === 'POST') {
    for (const k of Object.keys(counts)) counts[k] = 0;
    ctx.body = counts;
    return;
  }
  if (ctx.path === '/__test/token' && ctx.method === 'POST') {
    // Mints a user access token: ?sub=alice&scope=a+b&ttl=60&client_id=app&plan=pro&sid=s1
    // and &claims={...} (JSON: further claims, such as Keycloak's realm_access, that the
    // token's introspection answer carries).
    const q = ctx.query;
    const client = await provider.Client.find(q.client_id || 'app');
    const extra = { ...(q.plan ? { plan: q.plan } : {}), ...(q.claims ? JSON.parse(q.claims) : {}) };
    const token = new provider.AccessToken({
      accountId: q.sub || 'alice',
      client,
      scope: q.scope || 'invoice_read',
      gty: 'authorization_code',
      ...(Object.keys(extra).length ? { extra } : {}),
      ...(q.sid ? { sid: q.sid } : {}),
    });
    token.expiresIn = Number(q.ttl || 600);
    ctx.body = { access_token: await token.save(), expires_in: token.expiresIn };
    return;
  }
  if (ctx.path === '/__test/refresh' && ctx.method === 'POST') {
    // Mints a refresh token (no grant behind it, which introspection accepts):
    // ?sub=alice&scope=a+b&client_id=app
    const q = ctx.query;
    const client = await provider.Client.find(q.client_id || 'app');
    const token = new provider.RefreshToken({
      accountId: q.sub || 'alice',
      client,
      scope: q.scope || 'invoice_read',
      gty: 'authorization_code',
    });
    ctx.body = { refresh_token: await token.save() };
    return;
  }
  if (ctx.path === '/__test/sign' && ctx.method === 'POST' && jwks) {
    // Signs any header and claims with this AS's own key (only with SIGNING_KID), so
    // tests can forge tokens that are validly signed yet wrong in one claim.
    const body = await new Promise((resolve) => {
      let data = '';
      ctx.req.on('data', (c) => { data += c; });
      ctx.req.on('end', () => resolve(JSON.parse(data)));
    });
    ctx.body = { jwt: signJwt(body.header, body.claims) };
    return;
  }
  if (ctx.path === '/token/introspection') {
    counts.introspection += 1;
    console.log(JSON.stringify({ event: 'introspection', n: counts.introspection }));
    // AS_JWT_INTROSPECTION (needs SIGNING_KID): answer `Accept: application/jwt` with
    // the token's own JWT, signed by this AS, in one of two shapes that stand in for
    // ASes that cannot run here: `body` (Curity: the JWT is the body, 204 when not
    // active) and `claim` (Keycloak 25+: the JSON answer with the JWT in `jwt`).
    const asJwt = process.env.AS_JWT_INTROSPECTION && jwks && ctx.get('accept') === 'application/jwt';
    if (asJwt) ctx.request.header.accept = 'application/json';
    await next();
    const body = ctx.body;
    if (body && typeof body === 'object' && body.active) {
      // oidc-provider leaves token_type out for refresh tokens (and sets it for every
      // other kind); say what it is, as RFC 7662 ASes and Keycloak (typ) do.
      if (body.token_type === undefined) body.token_type = 'refresh_token';
      // An AS that names no expiry (RFC 7662 makes exp optional).
      if (process.env.INTROSPECTION_OMIT_EXP) delete body.exp;
    }
    if (asJwt) answerWithTokenJwt(ctx, process.env.AS_JWT_INTROSPECTION);
    return;
  } else if (ctx.path === '/token/revocation') {
    counts.revocation += 1;
    await next();
    // 200 for any token (RFC 7009), but only to a client that authenticated.
    if (ctx.status === 200) counts.revocation_ok += 1;
    return;
  } else if (ctx.path === '/jwks') {
    counts.jwks += 1;
  } else if (ctx.path === '/token') {
    counts.token += 1;
    if (hooks.tokenDelayMs) await new Promise((r) => setTimeout(r, hooks.tokenDelayMs));
    await next();
    if (hooks.idTokenFault && jwks && ctx.body && typeof ctx.body.id_token === 'string') {
      ctx.body = { ...ctx.body, id_token: spoilIdToken(ctx.body.id_token, hooks.idTokenFault) };
    }
    return;
  }
  await next();
});

// An ID token re-signed by this AS's own key (only with SIGNING_KID) with one claim
// wrong: `aud` (issued to another client), `nonce`, `iss`, `expired`.
function spoilIdToken(idToken, fault) {
  const claims = JSON.parse(Buffer.from(idToken.split('.')[1], 'base64url').toString());
  if (fault === 'aud') { claims.aud = 'app'; claims.azp = 'app'; }
  if (fault === 'nonce') claims.nonce = 'not-the-nonce-intercom-sent';
  if (fault === 'iss') claims.iss = 'https://elsewhere.example';
  if (fault === 'expired') { claims.iat -= 7200; claims.exp = Math.floor(Date.now() / 1000) - 3600; }
  return signJwt({}, claims);
}

// Signs any header and claims with this AS's own key (only with SIGNING_KID).
function signJwt(header, claims) {
  const full = { alg: 'RS256', kid: process.env.SIGNING_KID, ...header };
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const input = `${b64(full)}.${b64(claims)}`;
  const key = createPrivateKey({ key: jwks.keys[0], format: 'jwk' });
  return `${input}.${cryptoSign('sha256', Buffer.from(input), key).toString('base64url')}`;
}

// Turns an introspection answer into the AS-JWT shape `mode` (see AS_JWT_INTROSPECTION).
// A token's `as_jwt_fault` claim (set through /__test/token?claims=) spoils its JWT on
// purpose: `tampered` (signature no longer matches), `sub` (a sub that disagrees with
// the JSON), `expired`, `issuer` (another iss).
function answerWithTokenJwt(ctx, mode) {
  const answer = ctx.body;
  if (!answer || typeof answer !== 'object' || !answer.active) {
    if (mode === 'body') { ctx.status = 204; ctx.body = null; }
    return;
  }
  const fault = answer.as_jwt_fault;
  delete answer.as_jwt_fault;
  const { active, token_type, ...claims } = answer;
  claims.iss = issuer;
  claims.jti = randomUUID();
  if (fault === 'sub') claims.sub = 'mallory';
  if (fault === 'expired') claims.exp = Math.floor(Date.now() / 1000) - 3600;
  if (fault === 'issuer') claims.iss = 'https://elsewhere.example';
  let jwt = signJwt({ typ: 'at+jwt' }, claims);
  if (fault === 'tampered') {
    const [h, , sig] = jwt.split('.');
    const forged = Buffer.from(JSON.stringify({ ...claims, scope: `${claims.scope} admin` })).toString('base64url');
    jwt = `${h}.${forged}.${sig}`;
  }
  if (mode === 'body') {
    ctx.type = 'application/jwt';
    ctx.body = jwt;
  } else {
    ctx.body = { ...answer, jwt };
  }
}

provider.listen(port, host, () => {
  console.log(JSON.stringify({ event: 'listening', issuer }));
});
