#!/usr/bin/env bash
# Side-by-side benchmark: hermes-ssh-gateway vs a private OpenSSH sshd, same machine, same run,
# the real OpenSSH client, interleaved A B A B so machine drift cancels.
#
#   bench/run.sh            full run (a few minutes on 2 cores)
#   bench/run.sh --quick    small N, for the test suite (checks the harness, not the numbers)
#
# Prints a table (median, p95, gateway/sshd ratio) and writes bench/results.json (or $BENCH_OUT).
# Everything listens on 127.0.0.1 only, every loop is bounded, and every process it starts is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
if [ ! -x /usr/sbin/sshd ]; then
  echo "installing openssh-server (Debian package) for the comparison" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
  # The package starts a system sshd on port 22; the benchmark runs its own, so stop that one.
  (systemctl stop ssh 2>/dev/null || service ssh stop 2>/dev/null || pkill -f '^sshd: /usr/sbin/sshd' || true) >/dev/null 2>&1
fi
need python3 || { echo "python3 is needed for the harness" >&2; exit 1; }
cargo build --release --locked --quiet
exec python3 bench/bench.py "$@"
