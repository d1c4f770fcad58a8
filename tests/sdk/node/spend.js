// stripe-node against keyward's spend caps (keyward as its host): one JSON line per scenario.
// Environment: KW_PORT, KW_TOKEN; NODE_EXTRA_CA_CERTS = keyward's CA.
const Stripe = require("stripe");

const stripe = new Stripe(process.env.KW_TOKEN, {
  host: "localhost",
  port: Number(process.env.KW_PORT),
  protocol: "https",
  maxNetworkRetries: 0,
});

async function run(name, call) {
  let out;
  try {
    const obj = await call();
    out = { scenario: name, ok: true, object: obj.object ?? null };
  } catch (e) {
    out = { scenario: name, ok: false, exception: e.type, status: e.statusCode, code: e.code, message: e.message };
  }
  console.log(JSON.stringify(out));
}

(async () => {
  await run("within_cap", () => stripe.refunds.create({ charge: "ch_usd_9000", amount: 500 }));
  await run("over_cap", () => stripe.refunds.create({ charge: "ch_usd_9000", amount: 1000 }));
})();
