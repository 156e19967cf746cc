// The real OpenID provider of the kubeshield tests: panva's oidc-provider (certified), on 127.0.0.1.
//
//   KUBESHIELD_OIDC_MODULES=.venv/tools/oidc/node_modules node provider.mjs CONFIG.json
//
// CONFIG.json: {"clientId": "...", "users": {"alice": {"email": "...", "groups": [...]}},
//               "idTokenTtl": seconds}
// One public client (token_endpoint_auth_method none, PKCE S256 required by the provider for public
// clients, device_code and authorization_code grants, a native loopback redirect on any port),
// devInteractions on (any login and password are accepted), signing keys made at start (RSA and EC,
// nothing on disk). It listens on a port the OS picks (no race for a free port), then prints
// "ready <issuer>" on stdout.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const modules = process.env.KUBESHIELD_OIDC_MODULES;
if (!modules) {
  console.error('KUBESHIELD_OIDC_MODULES is not set (the node_modules folder holding oidc-provider)');
  process.exit(2);
}
const { default: Provider } = await import(pathToFileURL(join(modules, 'oidc-provider', 'lib', 'index.js')).href);

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;
const users = config.users || {};

function jwk(type, options, alg, kid) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig', kid };
}

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: config.clientId,
      client_name: 'kubeshield',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'authorization_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'],
      id_token_signed_response_alg: config.idTokenAlg || 'RS256',
    },
  ],
  jwks: {
    keys: [
      jwk('rsa', { modulusLength: 2048 }, 'RS256', 'rsa-1'),
      jwk('ec', { namedCurve: 'P-256' }, 'ES256', 'ec-1'),
    ],
  },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: {
    deviceFlow: { enabled: true },
    devInteractions: { enabled: true },
  },
  // the ID token carries the claims the relay maps (the scopes' claims, not only userinfo)
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  ttl: { IdToken: config.idTokenTtl || 3600 },
  async findAccount(_ctx, id) {
    const user = users[id] || {};
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: user.email || `${id}@example.test`,
          email_verified: true,
          name: id,
          preferred_username: id,
          groups: user.groups || [],
        };
      },
    };
  },
});
provider.proxy = false;
server.on('request', provider.callback());
process.stdout.write(`ready ${issuer}\n`);
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
