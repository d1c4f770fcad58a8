#!/usr/bin/env bash
# What the limits cost a call: keyward on its default settings with no limits, with a service
# `rate` and `[ratelimit] upstream_rate` kept locally, and with the same kept in Redis (one
# script call per request). Upstream, keyward and redis-server share CPU 0; wrk runs on CPU 1;
# keyward has one worker. Limits so large they never refuse: what is measured is their cost.
# Usage: benches/load/ratelimit.sh [seconds-per-run]   (writes benches/load/last-ratelimit-run.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECS=${1:-8}
W=$(mktemp -d /tmp/keyward-rl.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need nginx nginx; need wrk wrk; need redis-server redis-server; need taskset util-linux; need curl curl
cargo build --release --quiet
KW=$ROOT/target/release/keyward
SECRET=sk_test_loadbench_real_secret_0123456789
TOKEN=kw_load_service_1_token_abcdefghijklmnop
"$KW" certs dev --dir "$W/certs" >/dev/null
mkdir -p "$W/logs" "$W/run"

cat > "$W/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $W/run/upstream.pid; error_log $W/logs/upstream-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:9463 ssl http2;
    ssl_certificate $W/certs/keyward.crt; ssl_certificate_key $W/certs/keyward.key;
    keepalive_requests 1000000;
    location / { default_type application/json; return 200 '{"id":"ch_1","object":"charge"}'; }
  }
}
CONF
printf 'stripe = "%s"\n' "$SECRET" > "$W/secrets.toml"; chmod 600 "$W/secrets.toml"
config() { # name port extra-top extra-service
  local h; h=$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)
  cat > "$W/$1.toml" <<CONF
[server]
listen = "127.0.0.1:$2"
tls_cert = "$W/certs/keyward.crt"
tls_key = "$W/certs/keyward.key"
[upstream.api]
url = "https://localhost:9463"
ca = "$W/certs/ca.crt"
[secret.stripe]
source = "file"
path = "$W/secrets.toml"
key = "stripe"
[audit]
path = "$W/logs/$1-audit.jsonl"
$3
[[service]]
name = "svc1"
secret = "stripe"
source_ips = ["127.0.0.0/8"]
$4
[[service.token]]
id = "svc1-1"
sha256 = "$h"
[service.scope]
charge = "read"
CONF
}
LIMITS='rate = "1000000/s"
burst = 1000000
priority = "critical"'
config none 8463 "" ""
config local 8464 '[ratelimit]
upstream_rate = "1000000/s"' "$LIMITS"
config redis 8465 '[ratelimit]
upstream_rate = "1000000/s"
redis = "redis://127.0.0.1:6389/0"' "$LIMITS"

start() { local name=$1; shift; taskset -c 0 "$@" > "$W/logs/$name.out" 2> "$W/logs/$name.err" & PIDS+=($!); }
start redis redis-server --port 6389 --bind 127.0.0.1 --save "" --appendonly no
start upstream nginx -c "$W/upstream.conf" -p "$W"
sleep 1
for c in none local redis; do start "$c" "$KW" run --workers 1 --config "$W/$c.toml"; done
sleep 2
declare -A PORT=([none]=8463 [local]=8464 [redis]=8465)
for c in none local redis; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$W/certs/ca.crt" -H "Authorization: Bearer $TOKEN" "https://localhost:${PORT[$c]}/v1/charges/ch_1")
  [ "$code" = 200 ] || { echo "$c answers $code" >&2; cat "$W/logs/$c.err" >&2; exit 1; }
done

OUT=$ROOT/benches/load/last-ratelimit-run.md
ms() { python3 -c "import sys;v=sys.argv[1];print(float(v[:-2]) if v.endswith('ms') else float(v[:-2])/1000 if v.endswith('us') else float(v[:-1])*1000)" "$1"; }
{
  echo "# Rate-limit cost run $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores, $(redis-server --version | cut -d' ' -f1-3). Upstream, keyward (--workers 1) and redis-server on CPU 0, wrk on CPU 1; ${SECS}s per run."
  echo
  echo "| limits | connections | req/s | p50 ms | p99 ms |"
  echo "|---|---:|---:|---:|---:|"
} > "$OUT"
declare -A P50 P99 RPS
for conns in 1 16; do
  for c in none local redis; do
    res=$(taskset -c 1 wrk --latency -t1 -c$conns -d "${SECS}s" -H "Authorization: Bearer $TOKEN" "https://localhost:${PORT[$c]}/v1/charges/ch_1")
    if echo "$res" | grep -q "Non-2xx"; then echo "$c: non-2xx answers" >&2; echo "$res" >&2; exit 1; fi
    RPS[$c/$conns]=$(echo "$res" | awk '/Requests\/sec/{print $2}')
    P50[$c/$conns]=$(ms "$(echo "$res" | awk '$1=="50%"{print $2}')")
    P99[$c/$conns]=$(ms "$(echo "$res" | awk '$1=="99%"{print $2}')")
    echo "| $c | $conns | ${RPS[$c/$conns]} | ${P50[$c/$conns]} | ${P99[$c/$conns]} |" | tee -a "$OUT"
  done
done
d() { python3 -c "print(round(($1 - $2) * 1000))"; }
{
  echo
  for conns in 1 16; do
    echo "$conns connection(s): local limits add $(d "${P50[local/$conns]}" "${P50[none/$conns]}") µs at p50, $(d "${P99[local/$conns]}" "${P99[none/$conns]}") µs at p99; Redis adds $(d "${P50[redis/$conns]}" "${P50[none/$conns]}") µs at p50, $(d "${P99[redis/$conns]}" "${P99[none/$conns]}") µs at p99."
  done
  echo "Script calls Redis ran: $(redis-cli -p 6389 info commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\).*/\1/p'); keyward's log lines about the store: $(grep -c 'rate-limit store' "$W/logs/redis.err" || true)."
} | tee -a "$OUT"
