#!/usr/bin/env bash
# Signalling-only A/B: `run.py cps` at RATE (default 400) calls per second for
# each callrec binary given, ROUNDS rounds (default 2) interleaved, the peer
# stack after each round with PEER_EVERY=1 (only after the first without it;
# never with NOPEER=1). Before every run: sync, a PAUSE (default 45 s), then
# up to 120 s more until the load average is below 1.5.
# With FRESH_FS=GB every run gets a new ext4 file system of that size, made
# by mkfs.ext4's defaults (so with a journal, as production ones have), on a
# loop image under /var/tmp, mounted as the scratch folder: the root file
# system of these VMs has no journal, and there every new inode is placed
# past those freed in the last 1-6 minutes by anyone, so a run's cost depended
# on what the machine deleted before it: a deleted inode counts as recent
# for 60 s, or 360 s while its inode-table block is dirty, which the next
# run's own allocations keep it. FRESH_FS_OPTS is passed to mkfs.ext4
# ("-O ^has_journal" for a file system like that root one). Needs root.
# With FRESH_FS, OUT/jbd2.log gets a line per run: the journal commits
# (jbd2 transactions) the run caused on that file system.
#   benches/load/ab_cps.sh RESULTS_DIR BIN...
set -u
out=$1; shift
cd "$(dirname "$0")/../.."
scratch=/tmp/callrec-load
image=/var/tmp/callrec-load.img
fresh_fs() {
    [ -n "${FRESH_FS:-}" ] || return 0
    mountpoint -q "$scratch" && umount "$scratch"
    rm -f "$image"
    truncate -s "${FRESH_FS}G" "$image"
    # shellcheck disable=SC2086 # options are words
    mkfs.ext4 -q -F ${FRESH_FS_OPTS:-} "$image"
    mkdir -p "$scratch"
    mount -o loop "$image" "$scratch"
}
jbd2_info() {
    # /proc/fs/jbd2/<loop device>-8/info: "N transactions (M requested), ..."
    local dev
    dev=$(losetup -j "$image" 2>/dev/null | cut -d: -f1 | head -1)
    [ -n "$dev" ] || return 0
    head -1 "/proc/fs/jbd2/$(basename "$dev")-8/info" 2>/dev/null | cut -d' ' -f1
}
measure() {
    # measure LABEL CMD...: runs CMD, noting the journal commits it caused
    local label=$1 before after; shift
    before=$(jbd2_info)
    "$@"
    after=$(jbd2_info)
    if [ -n "$before" ] && [ -n "$after" ]; then
        mkdir -p "$out"
        echo "$(date -u +%H:%M:%S) $label jbd2_transactions=$((after - before))" >> "$out/jbd2.log"
    fi
}
drop_fs() {
    if [ -n "${FRESH_FS:-}" ]; then
        umount "$scratch"
        rm -f "$image"
    else
        rm -rf "$scratch"
    fi
}
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
        fresh_fs
        settle
        measure "$(basename "$b")" python3 benches/load/run.py --callrec "$b" --results "$out/$(basename "$b")" cps --stack callrec --rates "${RATE:-400}" 2>&1 | grep -- "->"
        drop_fs
    done
    if { [ "$round" = 1 ] || [ -n "${PEER_EVERY:-}" ]; } && [ -z "${NOPEER:-}" ]; then
        fresh_fs
        settle
        measure peer python3 benches/load/run.py --results "$out/peer" cps --stack peer --rates "${RATE:-400}" 2>&1 | grep -- "->"
        drop_fs
    fi
done
