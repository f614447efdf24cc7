// A minimal OpenID provider on loopback for fhirlake's external-IdP test.
//
// Issues JWT access tokens by client_credentials with a resource indicator (RFC 8707):
// audience = the FHIR base given as argv[2]; the token carries a `patient` claim and SMART
// scopes. Signing keys (ES256 + RS256) are generated at start. Prints "ISSUER=<url>" once
// listening; exits on SIGTERM.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const audience = process.argv[2] ?? 'https://fhir.example.org/r4';
const patient = process.argv[3] ?? 'pat-idp-1';
const clientSecret = process.env.IDP_CLIENT_SECRET ?? 'idp-test-secret';

function jwk(type, opts, alg) {
  const { privateKey } = generateKeyPairSync(type, opts);
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg, use: 'sig' };
}

const keys = [
  jwk('ec', { namedCurve: 'P-256' }, 'ES256'),
  jwk('rsa', { modulusLength: 2048 }, 'RS256'),
];
const scope = 'patient/*.rs patient/Coverage.rs patient/ExplanationOfBenefit.read';

const server = await new Promise((resolve) => {
  const s = createServer();
  s.listen(0, '127.0.0.1', () => resolve(s));
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'fhirlake-test',
    client_secret: clientSecret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope,
  }],
  jwks: { keys },
  scopes: ['openid', 'offline_access', ...scope.split(' ')],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: true },
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (resourceIndicator !== audience) throw new Error('unknown resource');
        return {
          scope,
          audience,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: process.env.IDP_ALG ?? 'ES256' } },
        };
      },
    },
  },
  extraTokenClaims: (ctx, token) => (token.kind === 'ClientCredentials' ? { patient } : undefined),
});

server.on('request', provider.callback());
process.stdout.write(`ISSUER=${issuer}\n`);
process.on('SIGTERM', () => server.close(() => process.exit(0)));
