// stripe-node's meter-event stream through keyward's forward port: straight to the stream with
// the keyward token (keyward makes the session), then the documented way (a session first).
// Environment: KW_PROXY, KW_TOKEN; NODE_EXTRA_CA_CERTS = the forward CA.
const Stripe = require("stripe");
const { HttpsProxyAgent } = require("https-proxy-agent");

const agent = new HttpsProxyAgent(process.env.KW_PROXY);
const client = (key) => new Stripe(key, { httpAgent: agent, maxNetworkRetries: 0 });
const events = { events: [{ event_name: "api_calls", payload: { stripe_customer_id: "cus_1", value: "1" } }] };

async function run(name, call) {
  let out;
  try {
    const obj = await call();
    out = { scenario: name, ok: true, token_is_callers: obj?.authentication_token === process.env.KW_TOKEN };
  } catch (e) {
    out = { scenario: name, ok: false, status: e.statusCode, code: e.code, message: e.message };
  }
  console.log(JSON.stringify(out));
}

(async () => {
  const stripe = client(process.env.KW_TOKEN);
  await run("stream_direct", () => stripe.v2.billing.meterEventStream.create(events));
  let session;
  await run("session", async () => (session = await stripe.v2.billing.meterEventSession.create()));
  await run("stream_after_session", () => client(session.authentication_token).v2.billing.meterEventStream.create(events));
})();
