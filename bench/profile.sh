#!/usr/bin/env bash
# Profiles exorelay under the 10-session 1 KiB workload (one connection per message):
# CPU times from /proc, a `perf record -g` call graph (software cpu-clock event: this also works
# in VMs without hardware counters), and syscall counts with `strace -c -f` (a separate run:
# strace slows the daemon, but the counts per message are what matter), then messages per
# group commit sync from the daemon's own counters (`exorelay queue metrics`) at 10 and 50
# sessions, with a connection per message and with connection reuse. Output in $OUT.
#
#   bench/profile.sh [MESSAGES]        (default 3000; run bench/relay-vs-postfix.sh once first)
#
# Environment: OUT (output directory), FLAGS (extra smtp-source flags for steps 1 and 2, e.g.
# FLAGS=-d for connection reuse), PERF_ONLY=1 (stop after the perf step), BATCH_ONLY=1 (run
# only step 3, the group commit count).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3000}
OUT=${OUT:-/var/tmp/exorelay-profile}
BIN=$PWD/target/release/exorelay
mkdir -p "$OUT"
for tool in perf strace; do
  command -v $tool >/dev/null || { echo "need $tool (apt-get install linux-perf strace)" >&2; exit 2; }
done

./target/release/relay-bench sink --seconds 900 > "$OUT/sink.log" &
SINK=$!
trap 'kill $SINK 2>/dev/null || true; [ -n "${RELAY:-}" ] && kill $RELAY 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "listening" "$OUT/sink.log" && break; sleep 0.05; done
SINKPORT=$(sed -n 's/^sink listening on 127.0.0.1:\([0-9]*\)$/\1/p' "$OUT/sink.log")

start_relay() { # $1: run dir; sets RELAY and PORT
  rm -rf "$1"; mkdir -p "$1"
  PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  cat > "$1/relay.toml" <<TOML
[server]
listen = ["127.0.0.1:$PORT"]
hostname = "relay.bench"
[[client]]
name = "bench"
networks = ["127.0.0.0/8"]
[[upstream]]
name = "sink"
host = "127.0.0.1"
port = $SINKPORT
tls = "none"
[queue]
dir = "spool"
TOML
  (cd "$1" && exec "$BIN" serve --config relay.toml 2> exorelay.log) &
  RELAY=$!
  for _ in $(seq 200); do grep -q "listening on" "$1/exorelay.log" 2>/dev/null && break; sleep 0.05; done
}

wait_sink() { # $1: messages expected in total
  for _ in $(seq 1200); do
    [ "$(tail -1 "$OUT/sink.log" | awk '{print $2}')" -ge "$1" ] 2>/dev/null && return 0; sleep 0.1
  done
  echo "sink did not reach $1" >&2; return 1
}

total=0
# 1. CPU time and perf call graph.
profile_cpu() {
start_relay "$OUT/run-perf"
perf record -F 1999 -e cpu-clock -g --call-graph dwarf,16384 -p $RELAY -o "$OUT/perf.data" 2> "$OUT/perf-record.log" &
PERF=$!
sleep 0.5
t0=$(date +%s.%N)
/usr/sbin/smtp-source ${FLAGS:-} -s 10 -m "$N" -l 1024 -M client.bench -f from@contoso.com -t to@example.net 127.0.0.1:$PORT
total=$((total + N)); wait_sink $total
t1=$(date +%s.%N)
read -r utime stime < <(awk '{print $14, $15}' /proc/$RELAY/stat)
tck=$(getconf CLK_TCK)
kill -INT $PERF; wait $PERF || true
kill $RELAY; wait $RELAY || true
python3 - "$t0" "$t1" "$utime" "$stime" "$tck" "$N" > "$OUT/cpu.txt" <<'PY'
import sys
t0,t1,u,s,tck,n=map(float,sys.argv[1:])
wall=t1-t0
print(f"wall {wall:.2f} s for {int(n)} messages under perf ({n/wall:.0f} msg/s); exorelay CPU: user {u/tck:.2f} s, system {s/tck:.2f} s "
      f"= {(u+s)/tck/wall*100:.0f} % of one core; {(u+s)/tck/n*1e6:.0f} us CPU per message")
PY
cat "$OUT/cpu.txt"
perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -v "^$" | head -150 > "$OUT/perf-flat.txt" || true
perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none 2>/dev/null \
  | grep -E "^ +[0-9]" | sed -E 's/ +-  +- *$//; s/ {2,}/  /g' | grep -vE "inlined\)$" | head -200 > "$OUT/perf-children.txt" || true
}

# 2. Syscalls (strace -c -f), including fsync/fdatasync counts against messages.
count_syscalls() {
start_relay "$OUT/run-strace"
strace -c -f -o "$OUT/strace.txt" -p $RELAY &
STRACE=$!
sleep 0.5
/usr/sbin/smtp-source -s 10 -m 1000 -l 1024 -M client.bench -f from@contoso.com -t to@example.net 127.0.0.1:$PORT
total=$((total + 1000)); wait_sink $total
kill -INT $STRACE; wait $STRACE || true
kill $RELAY; wait $RELAY || true
head -40 "$OUT/strace.txt"
}

# 3. Group commit, from the daemon's own counters (no tracing) at 10 and 50 sessions, with a
#    connection per message and with connection reuse (smtp-source -d): each
#    group commit is made durable by one fdatasync of the commit journal (small messages) or
#    one syncfs (a message too large for the journal; also journal checkpoints), so
#    messages / (journal syncs + syncfs) = messages per sync.
metric() { # $1: metric name; reads "$OUT/metrics-$LOAD.txt"
  awk -v m="$1" '$1==m {print $2}' "$OUT/metrics-$LOAD.txt"
}
count_group_commits() {
for REUSE in "" -d; do
for S in 10 50; do
  LOAD=$S${REUSE:+-reuse}
  start_relay "$OUT/run-batch$LOAD"
  /usr/sbin/smtp-source $REUSE -s $S -m "$N" -l 1024 -M client.bench -f from@contoso.com -t to@example.net 127.0.0.1:$PORT
  total=$((total + N)); wait_sink $total
  (cd "$OUT/run-batch$LOAD" && "$BIN" queue metrics --config relay.toml) > "$OUT/metrics-$LOAD.txt"
  kill $RELAY; wait $RELAY || true
  msgs=$(metric exorelay_spool_commit_messages_total)
  journal=$(metric exorelay_spool_journal_syncs_total)
  syncfs=$(metric exorelay_spool_filesystem_syncs_total)
  written=$(metric exorelay_spool_written_out_total)
  echo "group commit, $S sessions${REUSE:+ with connection reuse}: ${msgs:-0} messages committed, ${journal:-0} journal fdatasyncs, ${syncfs:-0} syncfs: $(python3 -c "print(f'{${msgs:-0}/max(1,${journal:-0}+${syncfs:-0}):.1f}')") messages per sync; ${written:-0} written out of the journal into files" | tee -a "$OUT/batches.txt"
done
done
}

if [ -n "${BATCH_ONLY:-}" ]; then
  count_group_commits
else
  profile_cpu
  [ -n "${PERF_ONLY:-}" ] && exit 0
  count_syscalls
  count_group_commits
fi
echo "profile output in $OUT"
