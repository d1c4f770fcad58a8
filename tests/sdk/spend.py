"""stripe-python against keyward's spend caps: prints one JSON line per scenario.

Environment: KW_BASE (https://localhost:PORT), KW_TOKEN, KW_CA (CA bundle for keyward's cert).
"""

import json
import os

import stripe

stripe.api_base = os.environ["KW_BASE"]
stripe.ca_bundle_path = os.environ["KW_CA"]
stripe.max_network_retries = 0
stripe.api_key = os.environ["KW_TOKEN"]


def run(name, call):
    try:
        obj = call()
        out = {"scenario": name, "ok": True, "object": getattr(obj, "object", None)}
    except stripe.StripeError as e:
        out = {
            "scenario": name,
            "ok": False,
            "exception": type(e).__name__,
            "status": e.http_status,
            "code": e.code or (e.error.code if e.error else None),
            "message": e.user_message,
        }
    print(json.dumps(out), flush=True)


run("within_cap", lambda: stripe.Refund.create(charge="ch_usd_9000", amount=500))
run("over_cap", lambda: stripe.Refund.create(charge="ch_usd_9000", amount=1000))
