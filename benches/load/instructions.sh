#!/usr/bin/env bash
# User-space instructions per request (valgrind callgrind), keyward against nginx: a number that,
# unlike timings, holds still on a noisy machine. Reuses the work directory (certificates and
# configs) of the last `benches/load/run.sh`. Kernel time is not counted: see RESULTS.md.
# Usage: benches/load/instructions.sh [requests-seconds]   (needs valgrind; installs it if missing)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
W=$(ls -dt /tmp/keyward-load.* 2>/dev/null | head -1 || true)
[ -f "${W:-}/keyward.toml" ] || { echo "run benches/load/run.sh first" >&2; exit 1; }
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
KW=${KEYWARD_BIN:-$PWD/target/release/keyward}
TOKEN="Bearer kw_load_service_60_token_abcdefghijklmnop"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
nginx -c "$W/upstream.conf" -p "$W" & PIDS+=($!)

measure() { # name port command...
  local name=$1 port=$2; shift 2
  local out="$W/callgrind.$name"; rm -f "$out"*
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$@" > "$W/logs/$name-callgrind.log" 2>&1 &
  local vg=$!; PIDS+=($vg)
  local url="https://localhost:$port/v1/charges/ch_3NxAbCdEfGhIjKlM"
  for _ in $(seq 1 120); do curl -s -o /dev/null --cacert "$W/certs/ca.crt" "https://localhost:$port/" && break; sleep 0.5; done
  wrk -t1 -c8 -d3s -H "Authorization: $TOKEN" "$url" > /dev/null # warm-up, not counted
  callgrind_control -i on "$vg" > /dev/null 2>&1
  local reqs; reqs=$(wrk -t1 -c8 -d"${SECS}s" -H "Authorization: $TOKEN" "$url" | awk '/requests in/{print $1}')
  callgrind_control -i off "$vg" > /dev/null 2>&1; callgrind_control -d "$vg" > /dev/null 2>&1; sleep 1
  kill "$vg" 2>/dev/null || true; wait "$vg" 2>/dev/null || true
  local ir; ir=$(callgrind_annotate "$out".1 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", ""); print $1}' || true)
  if [ -z "$reqs" ] || [ -z "$ir" ]; then echo "$name: no measurement (see $W/logs/$name-callgrind.log)" >&2; exit 1; fi
  echo "$name: $reqs requests, $((ir / reqs)) instructions per request"
}
measure keyward 8443 "$KW" run --workers 1 --config "$W/keyward.toml"
measure nginx 8444 nginx -c "$W/nginx.conf" -p "$W" -g 'master_process off;'
