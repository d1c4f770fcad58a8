// The official Stripe Node SDK through keyward's forward port: prints one JSON line per
// scenario. stripe-node ignores HTTPS_PROXY: the proxy is given as an agent.
// Environment: KW_PROXY (http://127.0.0.1:PORT), KW_TOKEN; NODE_EXTRA_CA_CERTS = the forward CA.
const Stripe = require("stripe");
const { HttpsProxyAgent } = require("https-proxy-agent");

const agent = new HttpsProxyAgent(process.env.KW_PROXY);
const client = (key) => new Stripe(key, { httpAgent: agent, maxNetworkRetries: 0 });

async function run(name, call) {
  let out;
  try {
    const obj = await call();
    out = { scenario: name, ok: true, object: obj.object ?? null, id: obj.id ?? null };
  } catch (e) {
    out = { scenario: name, ok: false, exception: e.type, status: e.statusCode, code: e.code, message: e.message };
  }
  console.log(JSON.stringify(out));
}

(async () => {
  const stripe = client(process.env.KW_TOKEN);
  await run("retrieve_customer", () => stripe.customers.retrieve("cus_123"));
  await run("list_charges", () => stripe.charges.list({ limit: 3 }));
  await run("create_charge", () => stripe.charges.create({ amount: 100, currency: "usd", source: "tok_visa" }));
  await run("bad_token", () => client("kw_not_a_real_token_000000000000").customers.retrieve("cus_123"));
})();
