#!/usr/bin/env python3
"""The API operations the installed Stripe SDKs can call, read out of their sources.

    scripts/sdk-operations.py [--node DIR] [--python DIR] [--missing-from CATALOG]

Prints one line per operation, `METHOD PATH UPSTREAM SDKS` (parameters as `{}`). With
`--missing-from config/stripe-catalog.txt` it prints only those the catalog has no entry for,
as catalog lines to classify (`?` where a permission belongs), and exits 1 if there are any.

stripe-node: `_makeRequest('POST', `/v1/x/${encodeURIComponent(id)}`` in cjs/resources/*.js.
stripe-python: `self._request("post", "/v1/x/{id}".format(...), base_address="api"` in its
services. Both SDKs are generated from Stripe's OpenAPI spec, so these patterns hold for
every operation; a resource file with calls but no match fails loudly.
"""

import argparse
import os
import re
import sys

NODE_CALL = re.compile(r"_makeRequest\(\s*'(GET|POST|DELETE)',\s*[`'\"]([^`'\"]+)[`'\"]")
PY_CALL = re.compile(
    r"self\._request(?:_async|_stream|_stream_async)?\(\s*\"(get|post|delete)\",\s*\"([^\"]+)\""
    r"(?:\.format\((?:[^()]|\([^()]*\))*\))?,\s*base_address=\"(\w+)\"",
    re.S,
)
NODE_BASE = re.compile(r"apiBase:\s*'(\w+)'")
UPSTREAM = {"api": "api", "files": "files", "connect": "connect", "meter_events": "meter_events",
            "meter-events": "meter_events"}


def shape(path):
    """`/v1/x/${encodeURIComponent(id)}` or `/v1/x/{id}` -> `/v1/x/{}`."""
    path = re.sub(r"\$\{[^}]*\}", "{}", path)
    return re.sub(r"\{[^}]*\}", "{}", path)


def node_operations(root):
    ops = {}
    resources = os.path.join(root, "cjs", "resources")
    for dirpath, _, files in os.walk(resources):
        for name in files:
            if not name.endswith(".js"):
                continue
            text = open(os.path.join(dirpath, name), encoding="utf-8").read()
            calls = list(NODE_CALL.finditer(text))
            if "_makeRequest(" in text and not calls:
                sys.exit(f"{name}: calls _makeRequest in a form this script does not read")
            for i, call in enumerate(calls):
                # The call's options (`apiBase: 'files'`) come before the next call.
                end = calls[i + 1].start() if i + 1 < len(calls) else len(text)
                base = NODE_BASE.search(text, call.end(), end)
                ops[(call.group(1), shape(call.group(2)))] = UPSTREAM.get(base.group(1), base.group(1)) if base else "api"
    return ops


def python_operations(root):
    ops = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not name.endswith("_service.py"):
                continue
            text = open(os.path.join(dirpath, name), encoding="utf-8").read()
            calls = PY_CALL.findall(text)
            if "self._request(" in text and not calls:
                sys.exit(f"{name}: calls self._request in a form this script does not read")
            for method, path, base in calls:
                ops[(method.upper(), shape(path))] = UPSTREAM.get(base, base)
    return ops


def catalog_shapes(path):
    shapes = set()
    for line in open(path, encoding="utf-8"):
        cols = line.split()
        if cols and not cols[0].startswith("#"):
            shapes.add((cols[0], shape(cols[1])))
    return shapes


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--node", default=os.path.join(here, "..", "tests", "sdk", "node", "node_modules", "stripe"))
    p.add_argument("--python", default=None, help="the stripe package's directory (default: the installed one)")
    p.add_argument("--missing-from", metavar="CATALOG")
    a = p.parse_args()
    if a.python is None:
        import stripe
        a.python = os.path.dirname(stripe.__file__)
    node, py = node_operations(a.node), python_operations(a.python)
    if not node or not py:
        sys.exit(f"no operations read (node: {len(node)}, python: {len(py)})")
    every = sorted(set(node) | set(py), key=lambda k: (k[1], k[0]))
    if a.missing_from is None:
        disagree = [k for k in every if k in node and k in py and node[k] != py[k]]
        for key in every:
            sdks = ",".join(n for n, ops in (("node", node), ("python", py)) if key in ops)
            print(key[0], key[1], node.get(key) or py.get(key), sdks)
        for k in disagree:
            print(f"# the SDKs disagree on {k[0]} {k[1]}: node {node[k]}, python {py[k]}", file=sys.stderr)
        return 1 if disagree else 0
    known = catalog_shapes(a.missing_from)
    missing = [k for k in every if k not in known]
    for method, path in missing:
        access = "read" if method == "GET" else "write"
        print(f"{method:<7} {path:<70} ?  {access:<5}  {node.get((method, path)) or py.get((method, path))}")
    print(f"# {len(missing)} of {len(every)} SDK operations are not in {a.missing_from}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
