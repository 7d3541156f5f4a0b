// A real OpenID Connect provider for tests/sso/ (oidc-provider, an OpenID Certified
// implementation), on loopback. Configured by the environment:
//   PORT            where it listens (127.0.0.1)
//   CLIENT_ID, CLIENT_SECRET, REDIRECT_URI   the one client: Unwind
//   USERS           a JSON file {"<login>": {"groups": [...], "email": ..., "name": ...}},
//                   read at every login, so a test can change a user's groups between two
//   An unknown login is an account with no groups.
// Its development login and consent pages take any login name and password.
// Prints "ready" once it listens.
import { readFileSync } from "node:fs";

import Provider from "oidc-provider";

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;

function users() {
  return JSON.parse(readFileSync(process.env.USERS, "utf8"));
}

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: process.env.CLIENT_ID,
      client_secret: process.env.CLIENT_SECRET,
      redirect_uris: [process.env.REDIRECT_URI],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_post",
    },
  ],
  // Every authorization needs PKCE (S256): a client that does not send it is refused.
  pkce: { required: () => true },
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["name", "preferred_username"],
    groups: ["groups"],
  },
  cookies: { keys: ["unwind-test-only-cookie-key"] },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        const user = users()[id] || {};
        return {
          sub: id,
          email: user.email || `${id}@example.test`,
          email_verified: true,
          name: user.name || id,
          preferred_username: id,
          groups: user.groups || [],
        };
      },
    };
  },
});

provider.listen(port, "127.0.0.1", () => {
  console.log(`ready ${issuer}`);
});
