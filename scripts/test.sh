#!/usr/bin/env bash
# Install what the tests need, then lint and run every test. The README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test tools (tests/requirements.txt)"
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
# stripe-node and https-proxy-agent, at the versions tests/sdk/node/package-lock.json pins.
npm ci --prefix tests/sdk/node --no-audit --no-fund --loglevel=error
# Cilium's CRD schemas (@kubernetes-models/cilium), for the Cilium egress overlay's policies,
# at the versions tests/crd/package-lock.json pins.
npm ci --prefix tests/crd --no-audit --no-fund --loglevel=error
# Debian packages: chromium (the HTML audit report is rendered headless in a test),
# ruby-rack (the differential test reads what reached the upstream with Rack) and
# redis-server (replicas share their rate limits in it; each test starts its own) and, where
# the machine image has no kubectl, kubernetes-client (the manifests are rendered with kustomize),
# and prometheus for its promtool (the alert rules are checked and unit-tested with it).
debs=()
command -v kubectl >/dev/null || debs+=(kubernetes-client)
command -v promtool >/dev/null || debs+=(prometheus)
command -v chromium >/dev/null || debs+=(chromium)
command -v redis-server >/dev/null || debs+=(redis-server)
ruby -e 'require "rack"' 2>/dev/null || debs+=(ruby-rack)
if [ ${#debs[@]} -gt 0 ]; then
  echo "== installing ${debs[*]} (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debs[@]}" >/dev/null
  # Only promtool is wanted: where systemd started the Prometheus server (on :9090, keyward's
  # default admin port), stop it.
  if [[ " ${debs[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
for tool in python3 hadolint bao kubernetes-validate chromium ruby redis-server kubectl promtool mount curl node; do
  command -v "$tool" >/dev/null || { echo "missing $tool after install" >&2; exit 1; }
done
ruby -e 'require "rack"' || { echo "ruby-rack did not install" >&2; exit 1; }
python3 -c "import stripe, prometheus_client" || { echo "python test packages did not install" >&2; exit 1; }
[ -d tests/crd/node_modules/@kubernetes-models/cilium ] || { echo "tests/crd's npm packages did not install" >&2; exit 1; }

echo "== hadolint Dockerfile"
hadolint Dockerfile

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

log=$(mktemp)
status=0
# The fairness test measures latency (p99 within 2 ms of its baseline): it runs on its own,
# before the others, so that neither their load on the machine's two cores nor what the
# attack tests leave behind (a machine slowed for minutes after 100 s of floods) is what it
# measures.
echo "== cargo test fairness (alone)"
cargo test --locked --test it fairness:: 2>&1 | tee "$log" || status=$?
echo "== cargo test"
cargo test --locked --no-fail-fast --lib --bins --tests -- --skip fairness:: 2>&1 | tee -a "$log" || status=$?
# One closing line for the whole run, printed whether or not tests failed.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0 || p == 0) }' "$log" || status=1
rm -f "$log"
exit "$status"
