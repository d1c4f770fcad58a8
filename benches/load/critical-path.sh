#!/usr/bin/env bash
# Where one request's time goes on one keep-alive connection, keyward against nginx: from the
# scheduler's switches and the proxy's write calls on CPU 0 (perf tracepoints), the medians of
#   request  - proxy woken by the client's request until it writes the call to the upstream,
#   sent     - what the proxy still does after writing the call, before the upstream runs,
#   upstream - the upstream stand-in's run that answers it,
#   answer   - proxy woken by the answer until it writes the response to the client,
#   tail     - what the proxy still does after that before it sleeps (records, clean-up).
# Medians hold still on this noisy machine where wrk's percentiles wander; each phase's p99 follows.
# Reuses the work directory of the last `benches/load/run.sh`; needs perf (linux-perf).
# Usage: benches/load/critical-path.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-4}
W=$(ls -dt /tmp/keyward-load.* 2>/dev/null | head -1 || true)
[ -f "${W:-}/keyward.toml" ] || { echo "run benches/load/run.sh first" >&2; exit 1; }
command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
KW=${KEYWARD_BIN:-$PWD/target/release/keyward}
# Trace files go below the work directory: keyward watches the directory of its config, and
# perf writing there would wake its watcher thousands of times a second on the measured core.
T="$W/trace"; mkdir -p "$T"
TOKEN="Bearer kw_load_service_60_token_abcdefghijklmnop"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
start() { taskset -c 0 "$@" > /dev/null 2>&1 & PIDS+=($!); }
start nginx -c "$W/upstream.conf" -p "$W"
start "$KW" run --workers 1 --config "$W/keyward.toml"
start nginx -c "$W/nginx.conf" -p "$W"
sleep 2
worker() { local c; c=$(pgrep -P "$1" | head -1 || true); echo "${c:-$1}"; }
UP=$(worker "${PIDS[0]}")

measure() { # name pid port
  local name=$1 pid=$2 port=$3
  taskset -c 1 wrk --latency -t1 -c1 -d"$((SECS + 2))s" -H "Authorization: $TOKEN" \
    "https://localhost:$port/v1/charges/ch_3NxAbCdEfGhIjKlM" > "$T/cp-wrk.txt" &
  local w=$!
  sleep 1
  # The proxy's sockets, wrk's connection among them.
  find "/proc/$pid/fd" -lname 'socket:*' -printf '%f\n' > "$T/cp-sockets.txt"
  perf record -q -C 0 -e sched:sched_switch -e syscalls:sys_enter_writev -e syscalls:sys_enter_write \
    -e syscalls:sys_enter_sendto -e syscalls:sys_enter_sendmsg -o "$T/cp.data" -- sleep "$SECS" > /dev/null 2>&1
  wait "$w"
  perf script -i "$T/cp.data" -F tid,time,event,trace 2> /dev/null > "$T/cp.txt"
  python3 - "$name" "$pid" "$UP" "$T/cp.txt" "$T/cp-wrk.txt" "$T/cp-sockets.txt" <<'PY'
import re, statistics, sys
name, pid, up, trace, wrk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
# Writes to sockets only (not the access log, not the runtime's eventfd).
sockets = {int(fd) for fd in open(sys.argv[6]).read().split()}
runs, cur = [], None  # (task, start, end, [offsets of socket writes])
for line in open(trace):
    m = re.match(r'\s*(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)', line)
    if not m:
        continue
    tid, t, event, rest = int(m[1]), float(m[2]) * 1e6, m[3], m[4]
    if event == 'sched:sched_switch':
        prev, nxt = (int(re.search(p + r'_pid=(\d+)', rest)[1]) for p in ('prev', 'next'))
        if cur and prev == cur[0]:
            runs.append((cur[0], cur[1], t, cur[2]))
        cur = (nxt, t, []) if nxt in (pid, up) else None
    elif cur and tid == cur[0] == pid:
        fd = re.search(r'fd: (0x[0-9a-f]+|\d+)', rest)
        if fd and int(fd[1], 0) in sockets:
            cur[2].append(t - cur[1])
med = lambda xs: statistics.median(xs) if xs else float('nan')
p99 = lambda xs: statistics.quantiles(xs, n=100)[98] if len(xs) > 100 else float('nan')
request, sent, answer, tail, upstream = [], [], [], [], []
for before, r, after in zip(runs, runs[1:], runs[2:]):
    if r[0] == up and r[2] - r[1] > 15:
        upstream.append(r[2] - r[1])
    if r[0] != pid or not r[3]:
        continue
    if after[0] == up:
        request.append(r[3][0])
        sent.append(r[2] - r[1] - r[3][0])
    elif before[0] == up:
        answer.append(r[3][0])
        tail.append(r[2] - r[1] - r[3][0])
text = open(wrk).read()
p50 = re.search(r'^\s+50%\s+(\S+)', text, re.M)[1]
rps = re.search(r'Requests/sec:\s+(\S+)', text)[1]
print(f"{name:8s} request {med(request):5.1f} µs | sent {med(sent):5.1f} µs | upstream {med(upstream):5.1f} µs | answer {med(answer):5.1f} µs"
      f" | tail {med(tail):5.1f} µs | wrk p50 {p50}, {rps} req/s")
wrk99 = re.search(r'^\s+99%\s+(\S+)', text, re.M)[1]
print(f"{'  p99':8s} request {p99(request):5.1f} µs | sent {p99(sent):5.1f} µs | upstream {p99(upstream):5.1f} µs | answer {p99(answer):5.1f} µs"
      f" | tail {p99(tail):5.1f} µs | wrk p99 {wrk99}")
PY
}
measure keyward "${PIDS[1]}" 8443
measure nginx "$(worker "${PIDS[2]}")" 8444
measure keyward "${PIDS[1]}" 8443
measure nginx "$(worker "${PIDS[2]}")" 8444
