#!/usr/bin/env bash
# User-space instructions per request (valgrind callgrind), keyward against nginx: a number that,
# unlike timings, holds still on a noisy machine. Reuses the work directory (certificates and
# configs) of the last `benches/load/run.sh`. Kernel time is not counted: see RESULTS.md.
# Usage: benches/load/instructions.sh [requests-seconds]   (needs valgrind; installs it if missing)
# CONNS=N keep-alive connections (8).
# CACHE=1 also simulates the caches (32 KiB L1s, 1 MiB L2) and prints the lines each request
# misses: how much code and data a request brings into a core the upstream shares.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
W=$(ls -dt /tmp/keyward-load.* 2>/dev/null | head -1 || true)
[ -f "${W:-}/keyward.toml" ] || { echo "run benches/load/run.sh first" >&2; exit 1; }
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
KW=${KEYWARD_BIN:-$PWD/target/release/keyward}
TOKEN="Bearer kw_load_service_60_token_abcdefghijklmnop"
PIDS=()
CONNS=${CONNS:-8}
SIM=; [ "${CACHE:-0}" = 1 ] && SIM="--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=1048576,16,64"
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
nginx -c "$W/upstream.conf" -p "$W" & PIDS+=($!)

measure() { # name port command...
  local name=$1 port=$2; shift 2
  local out="$W/callgrind.$name"; rm -f "$out"*
  valgrind --tool=callgrind $SIM --instr-atstart=no --callgrind-out-file="$out" "$@" > "$W/logs/$name-callgrind.log" 2>&1 &
  local vg=$!; PIDS+=($vg)
  local url="https://localhost:$port/v1/charges/ch_3NxAbCdEfGhIjKlM"
  for _ in $(seq 1 120); do curl -s -o /dev/null --cacert "$W/certs/ca.crt" "https://localhost:$port/" && break; sleep 0.5; done
  wrk -t1 -c"$CONNS" -d3s -H "Authorization: $TOKEN" "$url" > /dev/null # warm-up, not counted
  callgrind_control -i on "$vg" > /dev/null 2>&1
  local reqs; reqs=$(wrk -t1 -c"$CONNS" -d"${SECS}s" -H "Authorization: $TOKEN" "$url" | awk '/requests in/{print $1}')
  callgrind_control -i off "$vg" > /dev/null 2>&1; callgrind_control -d "$vg" > /dev/null 2>&1; sleep 1
  kill "$vg" 2>/dev/null || true; wait "$vg" 2>/dev/null || true
  local totals ir; totals=$(callgrind_annotate "$out".1 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(/\([^)]*\)/, ""); gsub(",", ""); print}' || true)
  ir=${totals%% *}
  if [ -z "$reqs" ] || [ -z "$ir" ]; then echo "$name: no measurement (see $W/logs/$name-callgrind.log)" >&2; exit 1; fi
  echo "$name: $reqs requests, $((ir / reqs)) instructions per request"
  if [ -n "$SIM" ]; then # Ir Dr Dw I1mr D1mr D1mw ...
    set -- $totals
    echo "  per request: L1 instruction misses $(($4 / reqs)), L1 data read misses $(($5 / reqs)), write misses $(($6 / reqs))"
  fi
}
measure keyward 8443 "$KW" run --workers 1 --config "$W/keyward.toml"
measure nginx 8444 nginx -c "$W/nginx.conf" -p "$W" -g 'master_process off;'
