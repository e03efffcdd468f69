// A real, certified OpenID provider (npm `oidc-provider`, OpenID Certified) standing in for
// Google in Nexus's browser tests: one confidential client, the library's own login and
// consent pages (any login name, any password), accounts whose e-mail is `<login>@example.com`.
//
// Environment: PORT (0 picks one), CLIENT_ID, CLIENT_SECRET, REDIRECT_URI. Prints
// `{"issuer": ...}` once it listens, then one `{"authorize": ...}` line per authorization
// request, so a test can count the browser's visits.
import http from 'node:http';
import Provider from 'oidc-provider';

const { PORT = '0', CLIENT_ID, CLIENT_SECRET, REDIRECT_URI } = process.env;
if (!CLIENT_ID || !CLIENT_SECRET || !REDIRECT_URI) {
  console.error('CLIENT_ID, CLIENT_SECRET and REDIRECT_URI are required');
  process.exit(2);
}

const configuration = {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: [REDIRECT_URI],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  cookies: { keys: ['nexus-browser-test-cookie-key'] },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  // The ID token carries the scopes' claims (Nexus maps them to headers at sign-in).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@example.com`, email_verified: true, name: id };
      },
    };
  },
};

const server = http.createServer();
server.listen(Number(PORT), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, configuration);
  provider.on('authorization.accepted', () => {});
  const callback = provider.callback();
  server.on('request', (req, res) => {
    if (req.url.startsWith('/auth?') || req.url === '/auth') {
      console.log(JSON.stringify({ authorize: req.url.split('?')[0] }));
    }
    callback(req, res);
  });
  console.log(JSON.stringify({ issuer }));
});
