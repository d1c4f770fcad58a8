"""stripe-python's meter-event stream through keyward, the way Stripe documents it: a session
made with the API key, then a client made with the session's authentication_token.

Environment: KW_BASE, KW_CA, KW_TOKEN. Prints one JSON line per scenario.
"""

import json
import os

import stripe

stripe.ca_bundle_path = os.environ["KW_CA"]
BASE = os.environ["KW_BASE"]
BASES = {"api": BASE, "meter_events": BASE}
EVENTS = {"events": [{"event_name": "api_calls", "payload": {"stripe_customer_id": "cus_1", "value": "1"}}]}


def run(name, call):
    try:
        call()
        out = {"scenario": name, "ok": True}
    except stripe.StripeError as e:
        out = {"scenario": name, "ok": False, "status": e.http_status, "code": e.code, "message": str(e)}
    print(json.dumps(out))


client = stripe.StripeClient(os.environ["KW_TOKEN"], base_addresses=BASES, max_network_retries=0)
session = client.v2.billing.meter_event_session.create()
print(json.dumps({"scenario": "session", "ok": True, "token_is_callers": session.authentication_token == os.environ["KW_TOKEN"]}))
stream = stripe.StripeClient(session.authentication_token, base_addresses=BASES, max_network_retries=0)
run("stream_1", lambda: stream.v2.billing.meter_event_stream.create(EVENTS))
run("stream_2", lambda: stream.v2.billing.meter_event_stream.create(EVENTS))
