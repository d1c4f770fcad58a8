#!/usr/bin/env bash
# Forward-mode load benchmark: keyward as HTTPS_PROXY against Squid 5 (ssl_bump) and mitmproxy
# (an addon) doing the same job (token checked, Authorization replaced, upstream pinned), and
# keyward's reverse mode as the baseline. The client is
# hey (`hey -x`: CONNECT, then TLS to the intercepting proxy); proxy and upstream share CPU 0,
# hey runs on CPU 1; one worker per proxy. All on loopback.
# Usage: benches/load/forward.sh [seconds-per-run]   (writes benches/load/last-forward-run.md)
# Knobs (environment): KEYWARD_BIN (a build to measure instead of this checkout's).
set -euo pipefail
[ -n "${KEYWARD_BIN:-}" ] && KEYWARD_BIN=$(realpath "$KEYWARD_BIN")
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECS=${1:-8}
W=$(mktemp -d /tmp/keyward-fwd.XXXXXX)
chmod 755 "$W" # Squid drops root for its own user, which must read its files here.
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need nginx nginx; need hey hey; need squid squid-openssl; need taskset util-linux; need curl curl; need openssl openssl
if [ -z "${KEYWARD_BIN:-}" ]; then cargo build --release --quiet; fi
# mitmproxy in a virtualenv of its own (kept between runs): it pins its own cryptography.
MITM_VENV=${MITM_VENV:-/tmp/keyward-bench-mitmproxy}
[ -x "$MITM_VENV/bin/mitmdump" ] || { python3 -m venv "$MITM_VENV" && "$MITM_VENV/bin/pip" install -q mitmproxy==11.0.2; }
KW=${KEYWARD_BIN:-$ROOT/target/release/keyward}

SECRET=sk_test_loadbench_real_secret_0123456789
TOKEN=kw_load_service_1_token_abcdefghijklmnop
mkdir -p "$W/logs" "$W/run" "$W/certs"
C=$W/certs
# The upstream stand-in is "api.stripe.com" on 127.0.0.2:443: its own CA, which the proxies pin.
# (keyward's listener takes 127.0.0.1:443: hey's Go client puts a URL's port in its SNI.)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-upstream-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
  -keyout "$C/up-ca.key" -out "$C/up-ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=api.stripe.com \
  -keyout "$C/up.key" -out "$C/up.csr" 2>/dev/null
openssl x509 -req -in "$C/up.csr" -CA "$C/up-ca.crt" -CAkey "$C/up-ca.key" -CAcreateserial -days 2 \
  -extfile <(printf 'subjectAltName=DNS:api.stripe.com') -out "$C/up.crt" 2>/dev/null
# keyward's listener certificate and the forward CA (Squid mints its leaves with the same CA).
"$KW" certs dev --dir "$C" >/dev/null
chmod 644 "$C"/*
chmod 600 "$C/forward-ca.key"
cp "$C/forward-ca.key" "$C/squid-ca.key"; chmod 644 "$C/squid-ca.key"
# hey (Go) trusts what SSL_CERT_FILE holds: keyward's listener CA and the forward CA.
cat "$C/ca.crt" "$C/forward-ca.crt" > "$C/clients.crt"
BODY=$(python3 -c 'import json;print(json.dumps({"id":"ch_3NxAbCdEfGhIjKlM","object":"charge","amount":2000,"currency":"usd","description":"load test "+"x"*700,"paid":True,"status":"succeeded"}))')

cat > "$W/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $W/run/upstream.pid; error_log $W/logs/upstream-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.2:443 ssl;
    ssl_certificate $C/up.crt; ssl_certificate_key $C/up.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 1000000;
    location / {
      if (\$http_authorization != "Bearer $SECRET") { return 401 '{"error":{"type":"invalid_request_error"}}'; }
      default_type application/json; add_header Request-Id req_upstream;
      return 200 '$BODY';
    }
  }
}
CONF

printf 'stripe = "%s"\n' "$SECRET" > "$W/secrets.toml"; chmod 600 "$W/secrets.toml"
H=$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)
# keyward's default settings; the upstream is dialled at the stand-in (connect_to).
cat > "$W/keyward.toml" <<CONF
[server]
listen = "127.0.0.1:443"
admin_listen = "127.0.0.1:9090"
tls_cert = "$C/keyward.crt"
tls_key = "$C/keyward.key"
[forward]
listen = "127.0.0.1:3128"
ca_cert = "$C/forward-ca.crt"
ca_key = "$C/forward-ca.key"
[upstream.api]
url = "https://api.stripe.com"
connect_to = "127.0.0.2:443"
ca = "$C/up-ca.crt"
[secret.stripe]
source = "file"
path = "$W/secrets.toml"
key = "stripe"
[audit]
path = "$W/logs/keyward-audit.jsonl"
[[service]]
name = "svc1"
secret = "stripe"
source_ips = ["127.0.0.0/8"]
[[service.token]]
id = "svc1-1"
sha256 = "$H"
[service.scope]
charge = "read"
CONF

# Squid 5 with ssl_bump: the token checked, Authorization replaced, the upstream pinned.
mkdir -p "$W/squid"; chmod 777 "$W/squid" "$W/logs" "$W/run"
/usr/lib/squid/security_file_certgen -c -s "$W/squid/ssl_db" -M 16MB >/dev/null
chmod -R a+rwX "$W/squid"
echo "127.0.0.2 api.stripe.com" > "$W/hosts"
cat > "$W/squid.conf" <<CONF
http_port 127.0.0.1:3129 ssl-bump tls-cert=$C/forward-ca.crt tls-key=$C/squid-ca.key generate-host-certificates=on dynamic_cert_mem_cache_size=16MB
sslcrtd_program /usr/lib/squid/security_file_certgen -s $W/squid/ssl_db -M 16MB
sslcrtd_children 4
ssl_bump bump all
tls_outgoing_options cafile=$C/up-ca.crt
hosts_file $W/hosts
acl api dstdomain api.stripe.com
acl SSL_ports port 443
acl CONNECT method CONNECT
acl token req_header Authorization ^Bearer\ $TOKEN\$
http_access deny CONNECT !SSL_ports
http_access allow CONNECT api
http_access allow api token
http_access deny all
request_header_access Authorization deny all
request_header_replace Authorization Bearer $SECRET
workers 1
cache deny all
cache_mem 8 MB
server_persistent_connections on
access_log stdio:$W/logs/squid-access.log
cache_log $W/logs/squid-cache.log
pid_filename $W/run/squid.pid
coredump_dir $W/squid
CONF

# mitmproxy: its own CA (it makes one in its confdir; its leaves' authority key id does not
# match the subject key id of a CA made elsewhere), an addon doing the job.
mkdir -p "$W/mitm"
cat > "$W/mitm/addon.py" <<PY
from mitmproxy import http

class Keyward:
    def server_connect(self, data):
        data.server.address = ("127.0.0.2", 443)  # api.stripe.com is the stand-in

    def request(self, flow):
        if flow.request.pretty_host != "api.stripe.com" or flow.request.headers.get("authorization") != "Bearer $TOKEN":
            flow.response = http.Response.make(403, b'{"error":{"type":"invalid_request_error"}}', {"content-type": "application/json"})
            return
        flow.request.headers["authorization"] = "Bearer $SECRET"

addons = [Keyward()]
PY

start() { # name, command...
  local name=$1; shift
  taskset -c 0 "$@" > "$W/logs/$name.out" 2> "$W/logs/$name.err" &
  PIDS+=($!); echo $! > "$W/run/$name.pid.real"
}
start upstream nginx -c "$W/upstream.conf" -p "$W"
start keyward "$KW" run --workers 1 --config "$W/keyward.toml"
start squid squid -N -f "$W/squid.conf"
start mitmproxy "$MITM_VENV/bin/mitmdump" -q --listen-host 127.0.0.1 -p 3130 --set confdir="$W/mitm" \
  --set ssl_verify_upstream_trusted_ca="$C/up-ca.crt" -s "$W/mitm/addon.py"
sleep 4
for name in upstream keyward squid mitmproxy; do
  kill -0 "$(cat "$W/run/$name.pid.real")" 2>/dev/null || { echo "$name did not start (port taken?):" >&2; cat "$W/logs/$name.err" "$W/logs/squid-cache.log" 2>/dev/null >&2; exit 1; }
done
cat "$W/mitm/mitmproxy-ca-cert.pem" >> "$C/clients.crt"
declare -A CA=([keyward-forward]=$C/forward-ca.crt [squid]=$C/forward-ca.crt [mitmproxy]=$W/mitm/mitmproxy-ca-cert.pem)
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# Squid's CPU: the process and its certificate helpers.
pids_of() { local p; p=$(cat "$W/run/$1.pid.real"); echo "$p $(pgrep -P "$p" | xargs)"; }
ticks_of() { local t=0; for p in $(pids_of "$1"); do t=$((t + $(cpu_ticks "$p" 2>/dev/null || echo 0))); done; echo $t; }

URL=https://api.stripe.com/v1/charges/ch_3NxAbCdEfGhIjKlM
declare -A PROXY=([keyward-forward]=http://127.0.0.1:3128 [squid]=http://127.0.0.1:3129 [mitmproxy]=http://127.0.0.1:3130)
echo "== correctness"
for t in keyward-forward squid mitmproxy; do
  ok=$(curl -s -o /dev/null -w '%{http_code}' -x "${PROXY[$t]}" --cacert "${CA[$t]}" -H "Authorization: Bearer $TOKEN" "$URL")
  bad=$(curl -s -o /dev/null -w '%{http_code}' -x "${PROXY[$t]}" --cacert "${CA[$t]}" -H "Authorization: Bearer kw_nobody" "$URL")
  echo "$t: allowed $ok, bad token $bad"
  [ "$ok" = 200 ] && [ "$bad" != 200 ] || { echo "$t answers wrongly" >&2; tail "$W/logs/squid-cache.log" >&2; exit 1; }
done
ok=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$C/ca.crt" -H "Authorization: Bearer $TOKEN" "https://localhost/v1/charges/ch_1")
echo "keyward-reverse: allowed $ok"; [ "$ok" = 200 ] || exit 1

OUT=$ROOT/benches/load/last-forward-run.md
{
  echo "# Forward-mode load run $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem/{print $2}') GiB."
  echo "Versions: keyward $("$KW" --version | cut -d' ' -f2), $(squid -v | head -1), mitmproxy $("$MITM_VENV/bin/mitmdump" --version | head -1 | cut -d' ' -f2), hey $(dpkg-query -W -f '${Version}' hey 2>/dev/null)."
  echo "Pinning: upstream (nginx, 1 worker) and the proxy under test on CPU 0, hey on CPU 1; keyward --workers 1, Squid workers 1, mitmproxy (one Python process). ${SECS}s per run. keyward on its default settings (HTTP/1.1 upstream pool)."
  echo
  echo "| mode | target | req/s | p50 ms | p99 ms | proxy CPU µs/req |"
  echo "|---|---|---:|---:|---:|---:|"
} > "$OUT"

declare -A RPS CPU
run() { # mode target hey-args...
  local mode=$1 t=$2; shift 2
  local who=keyward url=$URL px=()
  case $t in
    keyward-reverse) url=https://localhost/v1/charges/ch_3NxAbCdEfGhIjKlM ;;
    keyward-forward) px=(-x "${PROXY[$t]}") ;;
    squid|mitmproxy) who=$t; px=(-x "${PROXY[$t]}") ;;
  esac
  local before; before=$(ticks_of $who)
  local res; res=$(SSL_CERT_FILE=$C/clients.crt taskset -c 1 hey -z "${SECS}s" "$@" "${px[@]}" -H "Authorization: Bearer $TOKEN" "$url")
  local after; after=$(ticks_of $who)
  local n rps p50 p99
  n=$(echo "$res" | awk '/\[200\]/{print $2}')
  if echo "$res" | grep -qE '^\s+\[[013-9][0-9]{2}\]|Error distribution'; then echo "$t/$mode: errors" >&2; echo "$res" >&2; exit 1; fi
  rps=$(echo "$res" | awk '/Requests\/sec/{print $2}')
  p50=$(echo "$res" | awk '/ 50% in /{print $3*1000}'); p99=$(echo "$res" | awk '/ 99% in /{print $3*1000}')
  CPU[$mode/$t]=$(python3 -c "print(round(($after-$before)*1e6/$(getconf CLK_TCK)/$n, 1))")
  RPS[$mode/$t]=$rps
  echo "| $mode | $t | $rps | $p50 | $p99 | ${CPU[$mode/$t]} |" | tee -a "$OUT"
}
for t in keyward-reverse keyward-forward squid mitmproxy; do run keepalive-64 "$t" -c 64; done
for t in keyward-forward squid mitmproxy; do run tunnel-per-request "$t" -c 16 -disable-keepalive; done

ratio() { python3 -c "print(round(float('$1')/float('$2'), 2))"; }
{
  echo
  echo "| ratio | value | target |"
  echo "|---|---:|---|"
  echo "| forward keep-alive CPU/req ÷ keyward reverse | $(ratio "${CPU[keepalive-64/keyward-forward]}" "${CPU[keepalive-64/keyward-reverse]}") | ≤ 1.1 |"
  echo "| forward keep-alive CPU/req ÷ Squid | $(ratio "${CPU[keepalive-64/keyward-forward]}" "${CPU[keepalive-64/squid]}") | ≤ 0.33 |"
  echo "| forward keep-alive req/s ÷ Squid | $(ratio "${RPS[keepalive-64/keyward-forward]}" "${RPS[keepalive-64/squid]}") | ≥ 3 |"
  echo "| tunnel-per-request req/s ÷ Squid | $(ratio "${RPS[tunnel-per-request/keyward-forward]}" "${RPS[tunnel-per-request/squid]}") | ≥ 1.5 |"
  echo "| forward keep-alive req/s ÷ mitmproxy | $(ratio "${RPS[keepalive-64/keyward-forward]}" "${RPS[keepalive-64/mitmproxy]}") | |"
  echo "| forward keep-alive CPU/req ÷ mitmproxy | $(ratio "${CPU[keepalive-64/keyward-forward]}" "${CPU[keepalive-64/mitmproxy]}") | |"
  echo
  echo "Access records written by keyward: $(wc -l < "$W/logs/keyward-audit.jsonl"); chain: $("$KW" audit verify "$W/logs/keyward-audit.jsonl" 2>&1 | cut -c1-60)"
} | tee -a "$OUT"
