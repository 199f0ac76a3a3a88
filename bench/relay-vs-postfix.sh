#!/usr/bin/env bash
# exorelay vs Postfix, side by side in one run (issue 5). Usage:
#
#   bench/relay-vs-postfix.sh [--quick] [relay-bench run options…]
#
# Builds exorelay and the driver (bench/, `relay-bench`) in release mode, checks for Postfix
# (installs it with apt-get when run as root, otherwise says what to install), then runs the
# driver: a counting SMTP sink on 127.0.0.1, and for every workload alternating runs of
# `direct` (smtp-source straight into the sink), exorelay and a private Postfix instance, each
# started fresh on a fresh queue directory. Markdown tables go to stdout and to
# bench/results/<date>.md; progress to stderr. The full run (matrix with its STARTTLS rows,
# relay → sink over TLS, and the memory and start-up measurements) takes about 11 minutes on 2
# cores, --quick (no TLS rows) about 2 minutes. `--sides direct,lean,exorelay,postfix` adds a
# lean durable reference relay (relay-bench lean) and its own table (docs/PERFORMANCE.md,
# session 7). Everything listens on 127.0.0.1 only; nothing touches a system Postfix.
set -euo pipefail
cd "$(dirname "$0")/.."

need_postfix() {
  [ -x /usr/sbin/postfix ] && [ -x /usr/sbin/smtp-source ]
}

if ! need_postfix; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "relay-bench: installing postfix (for the private instance and smtp-source)…" >&2
    export DEBIAN_FRONTEND=noninteractive
    # No system Postfix on port 25 is configured or needed: the benchmark runs its own.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postfix >/dev/null
  else
    echo "relay-bench: Postfix 3.x is needed (/usr/sbin/postfix and /usr/sbin/smtp-source)." >&2
    echo "  Install it as root:  apt-get install --no-install-recommends postfix" >&2
    echo "  (choose 'No configuration'; the benchmark starts its own private instance)." >&2
    exit 2
  fi
fi
if [ "$(id -u)" != 0 ]; then
  # postfix start/stop of a private instance and chown of its data directory need root.
  echo "relay-bench: run as root (the private Postfix instance must be started as root)." >&2
  exit 2
fi

# 1,000 idle connections need ~1,100 descriptors in the driver and in exorelay (inherited).
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt 2200 ]; then
  echo "relay-bench: warning: ulimit -n is $(ulimit -n); the idle-connection test needs ~2200" >&2
fi

cargo build --release -p exorelay -p relay-bench >&2

mkdir -p bench/results
workdir=/var/tmp
prev=""
for a in "$@"; do
  if [ "$prev" = "--work-dir" ]; then workdir=$a; fi
  prev=$a
done
mkdir -p "$workdir"
suffix=""
if [[ " $* " == *" --quick "* ]]; then suffix="-quick"; fi
out="bench/results/$(date -u +%Y%m%dT%H%M%SZ)$suffix.md"
{
  echo "## relay-bench $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo
  echo "Command: \`bench/relay-vs-postfix.sh $*\`"
  echo
  echo "Machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM;"
  echo "spool/queue file system: $(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$workdir" | tr -s ' ' ' ') (under $workdir)"
  echo "Postfix $(/usr/sbin/postconf -d -h mail_version 2>/dev/null); exorelay: production defaults"
  echo "(fsync before 250, upstream max_connections 10, on loopback; no inbound STARTTLS, smtp-source → relay always plaintext;"
  echo "relay → sink plaintext, tls = \"none\" upstream, except in the STARTTLS table: exorelay tls = \"required\" + ca_file + server_name = \"localhost\","
  echo "Postfix smtp_tls_security_level = encrypt + smtp_tls_CAfile; the sink's certificate is ECDSA P-256 from a CA made at start)."
  echo
  ./target/release/relay-bench run --exorelay target/release/exorelay "$@"
} | tee "$out"
echo "relay-bench: results written to $out" >&2
