#!/usr/bin/env bash
# Load benchmark: keyward against nginx and HAProxy doing the crude version of its job, all on
# loopback. Proxy and upstream share CPU 0; wrk runs on CPU 1; one worker per proxy.
# Usage: benches/load/run.sh [seconds-per-run]   (writes benches/load/last-run.md)
# Each mode runs every target ROUNDS times (3), interleaved; ratios use the medians.
# keyward runs its default configuration (HTTP/2 to the upstream when offered).
# Knobs (environment): TARGETS, MODES, ROUNDS, IDLE=0, KEYWARD_HTTP2=0, UPSTREAM_H2=0, KEYWARD_BIN, and
# NGINX_LOG_BUFFER=64k (nginx buffers its access log, flushing every 10 ms, as keyward batches).
set -euo pipefail
# A relative KEYWARD_BIN means relative to where the script was started.
[ -n "${KEYWARD_BIN:-}" ] && KEYWARD_BIN=$(realpath "$KEYWARD_BIN")
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECS=${1:-8}
ROUNDS=${ROUNDS:-3}
W=$(mktemp -d /tmp/keyward-load.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need nginx nginx; need haproxy haproxy; need wrk wrk; need taskset util-linux; need curl curl
# KEYWARD_BIN measures another build (e.g. to compare allocators) instead of this checkout's.
if [ -z "${KEYWARD_BIN:-}" ]; then cargo build --release --quiet; fi
KW=${KEYWARD_BIN:-$ROOT/target/release/keyward}

SECRET=sk_test_loadbench_real_secret_0123456789
SERVICES=120
TOKEN=kw_load_service_60_token_abcdefghijklmnop
"$KW" certs dev --dir "$W/certs" >/dev/null
cat "$W/certs/keyward.crt" "$W/certs/keyward.key" > "$W/certs/haproxy.pem"
mkdir -p "$W/logs" "$W/run"
BODY=$(python3 -c 'import json;print(json.dumps({"id":"ch_3NxAbCdEfGhIjKlM","object":"charge","amount":2000,"amount_captured":2000,"currency":"usd","description":"load test "+"x"*700,"livemode":False,"metadata":{"order_id":"6735"},"paid":True,"status":"succeeded"}))')

# Every server here negotiates what keyward's listener does: TLS 1.3, AES-128-GCM preferred.
SUITES13=TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
SUITES="ssl_conf_command Ciphersuites $SUITES13; ssl_prefer_server_ciphers on;"

# --- upstream stand-in: nginx answering only the real secret; it offers HTTP/2 like Stripe
# (UPSTREAM_H2=0: HTTP/1.1 only, to see what HTTP/2 upstream buys keyward)
H2=" http2"; [ "${UPSTREAM_H2:-1}" = 1 ] || H2=
cat > "$W/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $W/run/upstream.pid; error_log $W/logs/upstream-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:9443 ssl$H2;
    ssl_certificate $W/certs/keyward.crt; ssl_certificate_key $W/certs/keyward.key;
    ssl_protocols TLSv1.2 TLSv1.3; $SUITES
    keepalive_requests 1000000;
    location / {
      if (\$http_authorization != "Bearer $SECRET") { return 401 '{"error":{"type":"invalid_request_error"}}'; }
      default_type application/json; add_header Request-Id req_upstream;
      return 200 '$BODY';
    }
  }
}
CONF

# --- keyward: 120 services, the full catalog, audit log to a file, file secrets
printf 'stripe = "%s"\n' "$SECRET" > "$W/secrets.toml"; chmod 600 "$W/secrets.toml"
{
  cat <<CONF
[server]
listen = "127.0.0.1:8443"
admin_listen = "127.0.0.1:9090"
tls_cert = "$W/certs/keyward.crt"
tls_key = "$W/certs/keyward.key"
[upstream.api]
url = "https://localhost:9443"
ca = "$W/certs/ca.crt"
$([ "${KEYWARD_HTTP2:-}" = 0 ] && echo "http2 = false")
[secret.stripe]
source = "file"
path = "$W/secrets.toml"
key = "stripe"
[audit]
path = "$W/logs/keyward-audit.jsonl"
CONF
  for i in $(seq 1 $SERVICES); do
    t="kw_load_service_${i}_token_abcdefghijklmnop"
    h=$(printf '%s' "$t" | sha256sum | cut -d' ' -f1)
    printf '[[service]]\nname = "svc%s"\nsecret = "stripe"\nsource_ips = ["127.0.0.0/8"]\n[[service.token]]\nid = "svc%s-1"\nsha256 = "%s"\n[service.scope]\ncharge = "read"\ncustomer = "read"\n' "$i" "$i" "$h"
  done
} > "$W/keyward.toml"

# --- nginx peer: token map, path allowlist, Authorization replaced, TLS keep-alive upstream
{
  cat <<CONF
worker_processes 1; daemon off; pid $W/run/nginx.pid; error_log $W/logs/nginx-error.log;
events { worker_connections 4096; }
http {
  log_format kw '\$time_iso8601 \$remote_addr \$request_method \$uri \$status \$upstream_status \$request_time';
  access_log $W/logs/nginx-access.log kw${NGINX_LOG_BUFFER:+ buffer=$NGINX_LOG_BUFFER flush=10ms};
  upstream stripe { server 127.0.0.1:9443; keepalive 64; }
  map_hash_bucket_size 128;
  map \$http_authorization \$kw_allowed {
    default 0;
CONF
  for i in $(seq 1 $SERVICES); do printf '    "Bearer kw_load_service_%s_token_abcdefghijklmnop" 1;\n' "$i"; done
  cat <<CONF
  }
  server {
    listen 127.0.0.1:8444 ssl;
    ssl_certificate $W/certs/keyward.crt; ssl_certificate_key $W/certs/keyward.key;
    # nginx before 1.23.4 leaves TLS 1.3 off by default; without this line the peer would
    # resume TLS 1.2 sessions (no key exchange) while keyward does TLS 1.3 (X25519 each time).
    ssl_protocols TLSv1.2 TLSv1.3; $SUITES
    keepalive_requests 1000000;
    if (\$kw_allowed = 0) { return 401; }
    location ~ ^/v1/(charges|customers)(/[A-Za-z0-9_]+)?\$ {
      proxy_pass https://stripe;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host localhost;
      proxy_set_header Authorization "Bearer $SECRET";
      proxy_ssl_server_name on; proxy_ssl_name localhost;
      proxy_ssl_verify on; proxy_ssl_trusted_certificate $W/certs/ca.crt;
      proxy_ssl_session_reuse on;
    }
    location / { return 403; }
  }
}
CONF
} > "$W/nginx.conf"

# --- HAProxy peer: the same, one thread
for i in $(seq 1 $SERVICES); do printf 'kw_load_service_%s_token_abcdefghijklmnop 1\n' "$i"; done > "$W/tokens.map"
cat > "$W/haproxy.cfg" <<CONF
global
  nbthread 1
  log stdout format raw local0
  ssl-server-verify required
defaults
  mode http
  log global
  option httplog
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:8445 ssl crt $W/certs/haproxy.pem ciphersuites $SUITES13
  http-request return status 401 unless { req.hdr(authorization),word(2,' '),map($W/tokens.map) -m found }
  http-request return status 403 unless { path_reg ^/v1/(charges|customers)(/[A-Za-z0-9_]+)?\$ }
  http-request set-header Authorization "Bearer $SECRET"
  http-request set-header Host localhost
  default_backend stripe
backend stripe
  server s1 127.0.0.1:9443 ssl verify required ca-file $W/certs/ca.crt sni str(localhost) alpn h2,http/1.1
CONF

start() { # name, command...
  local name=$1; shift
  taskset -c 0 "$@" > "$W/logs/$name.out" 2> "$W/logs/$name.err" &
  PIDS+=($!); echo $! > "$W/run/$name.pid.real"
}
start upstream nginx -c "$W/upstream.conf" -p "$W"
start keyward "$KW" run --workers 1 --config "$W/keyward.toml"
start nginx nginx -c "$W/nginx.conf" -p "$W"
start haproxy haproxy -db -f "$W/haproxy.cfg"
sleep 2
for name in upstream keyward nginx haproxy; do
  kill -0 "$(cat "$W/run/$name.pid.real")" 2>/dev/null || { echo "$name did not start (port taken?):" >&2; cat "$W/logs/$name.err" >&2; exit 1; }
done

# The process that does the proxying (nginx: its single worker, not the master).
proxy_pid() {
  local p; p=$(cat "$W/run/$1.pid.real")
  local child; child=$(pgrep -P "$p" | head -1 || true)
  echo "${child:-$p}"
}
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/VmHWM/{print $2}' "/proc/$1/status"; }

declare -A PORT=([direct]=9443 [keyward]=8443 [nginx]=8444 [haproxy]=8445)
auth() { if [ "$1" = direct ]; then echo "Bearer $SECRET"; else echo "Bearer $TOKEN"; fi; }

echo "== correctness"
for t in direct keyward nginx haproxy; do
  u="https://localhost:${PORT[$t]}"
  ok=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$W/certs/ca.crt" -H "Authorization: $(auth $t)" "$u/v1/charges/ch_1")
  bad=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$W/certs/ca.crt" -H "Authorization: Bearer kw_nobody" "$u/v1/charges/ch_1")
  if [ $t = direct ]; then path=401; else
  path=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$W/certs/ca.crt" -H "Authorization: $(auth $t)" "$u/v1/payouts"); fi
  # Like with like: every target must terminate TLS 1.3, as keyward does.
  tls=$(curl -sv -o /dev/null --cacert "$W/certs/ca.crt" -H "Authorization: $(auth $t)" "$u/v1/charges/ch_1" 2>&1 | sed -n 's/.*SSL connection using \(TLSv[0-9.]* \/ [A-Z0-9_]*\).*/\1/p')
  echo "$t: allowed $ok, bad token $bad, denied path $path, $tls"
  [ "$tls" = "TLSv1.3 / TLS_AES_128_GCM_SHA256" ] || { echo "$t negotiates $tls, not keyward's TLS 1.3 suite" >&2; exit 1; }
  [ "$ok" = 200 ] && [ "$bad" = 401 ] && { [ $t = direct ] || [ "$path" = 403 ]; } || { echo "$t answers wrongly" >&2; exit 1; }
done

OUT=$ROOT/benches/load/last-run.md
{
  echo "# Load run $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem/{print $2}') GiB."
  echo "Versions: keyward $("$KW" --version | cut -d' ' -f2), $(nginx -v 2>&1 | cut -d' ' -f3), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)."
  echo "Pinning: upstream and the proxy under test on CPU 0 (taskset -c 0), wrk on CPU 1; one worker each (keyward --workers 1, nginx worker_processes 1, HAProxy nbthread 1). ${SECS}s per run, ${ROUNDS} interleaved rounds per mode (ratios from each target's median). TLS both sides; each proxy writes an access log line per request to a file."
  echo
  echo "| mode | target | req/s | p50 ms | p99 ms | proxy CPU µs/req | proxy RSS MiB |"
  echo "|---|---|---:|---:|---:|---:|---:|"
} > "$OUT"

declare -A RPS CPU P50 P99 ALL_RPS ALL_CPU ALL_P50 ALL_P99
run() { # mode target round wrk-args...
  local mode=$1 t=$2 round=$3; shift 3
  local pid="" before=0
  if [ "$t" != direct ]; then pid=$(proxy_pid "$t"); before=$(cpu_ticks "$pid"); fi
  local res; res=$(taskset -c 1 wrk --latency -d "${SECS}s" -H "Authorization: $(auth $t)" "$@" "https://localhost:${PORT[$t]}/v1/charges/ch_3NxAbCdEfGhIjKlM")
  local reqs rps p50 p99 cpu="-" rss="-"
  reqs=$(echo "$res" | awk '/requests in/{print $1}')
  rps=$(echo "$res" | awk '/Requests\/sec/{print $2}')
  p50=$(echo "$res" | awk '$1=="50%"{print $2}'); p99=$(echo "$res" | awk '$1=="99%"{print $2}')
  if echo "$res" | grep -q "Non-2xx"; then echo "$t/$mode: non-2xx answers" >&2; echo "$res" >&2; exit 1; fi
  if [ -n "$pid" ]; then
    local after; after=$(cpu_ticks "$pid")
    cpu=$(python3 -c "print(round(($after-$before)*1e6/$(getconf CLK_TCK)/$reqs, 1))")
    rss=$(python3 -c "print(round($(hwm_kib "$pid")/1024, 1))")
  fi
  ms() { python3 -c "import sys;v=sys.argv[1];print(float(v[:-2]) if v.endswith('ms') else float(v[:-2])/1000 if v.endswith('us') else float(v[:-1])*1000)" "$1"; }
  p50=$(ms "$p50"); p99=$(ms "$p99")
  ALL_RPS[$mode/$t]+=" $rps"; ALL_CPU[$mode/$t]+=" $cpu"; ALL_P50[$mode/$t]+=" $p50"; ALL_P99[$mode/$t]+=" $p99"
  echo "| $mode | $t (round $round) | $rps | $p50 | $p99 | $cpu | $rss |" | tee -a "$OUT"
}
median() { python3 -c "import statistics,sys;v=sys.argv[1:];print('-' if '-' in v else round(statistics.median(map(float,v)),3))" $1; }
# The machine's speed wanders by tens of per cent within a minute: each mode runs its targets
# in ROUNDS interleaved rounds (direct, keyward, nginx, HAProxy, direct, …) and the ratios use
# each target's median, so that one slow moment does not decide a comparison.
rounds() { # mode wrk-args...
  local mode=$1; shift
  for r in $(seq 1 "$ROUNDS"); do for t in $TARGETS; do run "$mode" "$t" "$r" "$@"; done; done
  for t in $TARGETS; do
    RPS[$mode/$t]=$(median "${ALL_RPS[$mode/$t]}"); CPU[$mode/$t]=$(median "${ALL_CPU[$mode/$t]}")
    P50[$mode/$t]=$(median "${ALL_P50[$mode/$t]}"); P99[$mode/$t]=$(median "${ALL_P99[$mode/$t]}")
    echo "| $mode | **$t, median** | ${RPS[$mode/$t]} | ${P50[$mode/$t]} | ${P99[$mode/$t]} | ${CPU[$mode/$t]} | |" | tee -a "$OUT"
  done
}

TARGETS=${TARGETS:-direct keyward nginx haproxy}
MODES=${MODES:-keepalive-64 one-connection new-connection}
for t in $TARGETS; do [ -n "${PORT[$t]:-}" ] || { echo "unknown target $t (direct keyward nginx haproxy)" >&2; exit 1; }; done
for m in $MODES; do case $m in keepalive-64|one-connection|new-connection) ;; *) echo "unknown mode $m" >&2; exit 1;; esac; done
wants() { [[ " $MODES " == *" $1 "* ]]; }
wants keepalive-64 && rounds keepalive-64 -t1 -c64
wants one-connection && rounds one-connection -t1 -c1
wants new-connection && rounds new-connection -t1 -c16 -H "Connection: close"

# Idle keep-alive connections: RSS of keyward holding 1,000 of them.
KPID=$(proxy_pid keyward)
IDLE_RSS=-
[ "${IDLE:-1}" = 1 ] && IDLE_RSS=$(python3 - "$W/certs/ca.crt" "$TOKEN" "$KPID" <<'PY'
import resource, socket, ssl, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
ctx = ssl.create_default_context(cafile=sys.argv[1])
conns = []
for i in range(1000):
    # From eight loopback addresses: keyward's default max_connections_per_ip is 256.
    src = (f"127.0.0.{1 + i % 8}", 0)
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 8443), source_address=src), server_hostname="localhost")
    s.sendall(b"GET /v1/charges/ch_1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " + sys.argv[2].encode() + b"\r\n\r\n")
    s.recv(65536)
    conns.append(s)
time.sleep(1)
rss = int([l for l in open(f"/proc/{sys.argv[3]}/status") if l.startswith("VmRSS")][0].split()[1])
print(round(rss / 1024, 1))
for s in conns:
    s.close()
PY
)

ratio() { python3 -c "a,b='$1','$2'; print('-' if '-' in (a,b) or '' in (a,b) else round(float(a)/float(b), 2))"; }
{
  echo
  echo "RSS of keyward holding 1,000 idle keep-alive connections: ${IDLE_RSS} MiB (target ≤ 64)."
  echo
  echo "| ratio | keep-alive req/s | keep-alive CPU/req | 1-conn p50 | 1-conn p99 | new-conn req/s |"
  echo "|---|---:|---:|---:|---:|---:|"
  for peer in nginx haproxy direct; do
    echo "| keyward / $peer | $(ratio "${RPS[keepalive-64/keyward]:-}" "${RPS[keepalive-64/$peer]:-}") | $(ratio "${CPU[keepalive-64/keyward]:-}" "${CPU[keepalive-64/$peer]:-}") | $(ratio "${P50[one-connection/keyward]:-}" "${P50[one-connection/$peer]:-}") | $(ratio "${P99[one-connection/keyward]:-}" "${P99[one-connection/$peer]:-}") | $(ratio "${RPS[new-connection/keyward]:-}" "${RPS[new-connection/$peer]:-}") |"
  done
  echo
  added() { python3 -c "a,b='$1','$2'; print('-' if '' in (a,b) else round(float(a)-float(b), 3))"; }
  echo "One connection, latency added to direct's p50: keyward $(added "${P50[one-connection/keyward]:-}" "${P50[one-connection/direct]:-}") ms, nginx $(added "${P50[one-connection/nginx]:-}" "${P50[one-connection/direct]:-}") ms, HAProxy $(added "${P50[one-connection/haproxy]:-}" "${P50[one-connection/direct]:-}") ms."
  echo
  echo "Targets: keep-alive req/s ≥ 1.5 × nginx and ≥ 1.2 × HAProxy; CPU/req ≤ 0.65 × nginx; one connection: keyward's added latency ≤ nginx's; new connection req/s ≥ nginx."
  echo "Access records written by keyward: $(wc -l < "$W/logs/keyward-audit.jsonl"); chain: $("$KW" audit verify "$W/logs/keyward-audit.jsonl" 2>&1 | cut -c1-60)"
} | tee -a "$OUT"
