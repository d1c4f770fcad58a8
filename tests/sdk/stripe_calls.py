"""The official Stripe Python SDK pointed at keyward: prints one JSON line per scenario.

Environment: KW_BASE (https://localhost:PORT), KW_TOKEN, KW_CA (CA bundle for keyward's cert).
Forward mode: KW_PROXY (http://127.0.0.1:PORT) instead of KW_BASE, and KW_CA the forward CA: the
SDK keeps its default api_base and upload_api_base and reaches them through the proxy.
"""

import io
import json
import os
import sys

import stripe

PROXY = os.environ.get("KW_PROXY")
if PROXY:
    stripe.proxy = PROXY
else:
    stripe.api_base = os.environ["KW_BASE"]
    stripe.upload_api_base = os.environ["KW_BASE"]
    stripe.connect_api_base = os.environ["KW_BASE"]
stripe.ca_bundle_path = os.environ["KW_CA"]
stripe.max_network_retries = 0
TOKEN = os.environ["KW_TOKEN"]


def run(name, call):
    try:
        obj = call()
        out = {"scenario": name, "ok": True, "object": getattr(obj, "object", None), "id": getattr(obj, "id", None)}
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


def main():
    stripe.api_key = TOKEN
    run("retrieve_customer", lambda: stripe.Customer.retrieve("cus_123"))
    run("list_charges", lambda: stripe.Charge.list(limit=3))
    run("create_charge", lambda: stripe.Charge.create(amount=100, currency="usd", source="tok_visa"))
    run("create_refund", lambda: stripe.Refund.create(charge="ch_123"))
    run("connect_allowed", lambda: stripe.Customer.retrieve("cus_789", stripe_account="acct_1Allowed"))
    run("connect_denied", lambda: stripe.Customer.retrieve("cus_789", stripe_account="acct_1Other"))
    run("expand_allowed", lambda: stripe.Charge.retrieve("ch_123", expand=["customer"]))
    run("expand_denied", lambda: stripe.Charge.retrieve("ch_123", expand=["balance_transaction"]))
    run("upload_file", lambda: stripe.File.create(purpose="dispute_evidence", file=io.BytesIO(b"%PDF-1.4 evidence")))
    if PROXY:
        client = stripe.StripeClient(TOKEN, proxy=PROXY)
    else:
        client = stripe.StripeClient(TOKEN, base_addresses={"api": os.environ["KW_BASE"]})
    run("client_retrieve_customer", lambda: client.customers.retrieve("cus_456"))
    stripe.api_key = "kw_not_a_real_token_000000000000"
    run("bad_token", lambda: stripe.Customer.retrieve("cus_123"))


if __name__ == "__main__":
    sys.exit(main())
