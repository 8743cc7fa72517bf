#!/usr/bin/env bash
# Signalling-only A/B: `run.py cps` at RATE (default 400) calls per second for
# each callrec binary given, ROUNDS rounds (default 2) interleaved, the peer
# stack after each round with PEER_EVERY=1 (only after the first without it;
# never with NOPEER=1). Before every run: sync, a PAUSE (default 45 s), then
# up to 120 s more until the load average is below 1.5. The pause matters on
# ext4 without a journal: for 30 s after the previous run's files are deleted,
# every new inode is allocated past them, which slowed the next run's call
# set-up by hundreds of ms.
#   benches/load/ab_cps.sh RESULTS_DIR BIN...
set -u
out=$1; shift
cd "$(dirname "$0")/../.."
settle() {
    sync; sleep "${PAUSE:-45}"
    for i in $(seq 1 24); do
        python3 -c "import sys; sys.exit(0 if float(open('/proc/loadavg').read().split()[0]) < 1.5 else 1)" && break
        sleep 5
    done
    echo "settled at load $(cut -d' ' -f1 /proc/loadavg)"
}
for round in $(seq 1 "${ROUNDS:-2}"); do
    for b in "$@"; do
        settle
        python3 benches/load/run.py --callrec "$b" --results "$out/$(basename "$b")" cps --stack callrec --rates "${RATE:-400}" 2>&1 | grep -- "->"
        rm -rf /tmp/callrec-load
    done
    if { [ "$round" = 1 ] || [ -n "${PEER_EVERY:-}" ]; } && [ -z "${NOPEER:-}" ]; then
        settle
        python3 benches/load/run.py --results "$out/peer" cps --stack peer --rates "${RATE:-400}" 2>&1 | grep -- "->"
        rm -rf /tmp/callrec-load
    fi
done
