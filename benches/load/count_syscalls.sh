#!/usr/bin/env bash
# File-system system calls of callrec during a signalling-only run: perf stat
# on the syscall tracepoints, attached once callrec is up, until it exits.
#   benches/load/count_syscalls.sh BIN OUT.txt [RATE]   (RATE cps for 10 s, default 200)
set -u
b=$1; out=$2; rate=${3:-200}
mkdir -p "$(dirname "$out")"
cd "$(dirname "$0")/../.."
python3 benches/load/run.py --callrec "$b" --results "$(dirname "$out")/runs" cps --stack callrec --rates "$rate" >"$out.log" 2>&1 &
rp=$!
pid=
for _ in $(seq 1 100); do pid=$(pgrep -f "^$b run" | head -1); [ -n "$pid" ] && break; sleep 0.1; done
[ -n "$pid" ] || { echo "callrec did not start" >&2; wait $rp; exit 1; }
events=fsync,fdatasync,syncfs,openat,mkdir,rename,unlink,unlinkat,linkat
perf stat -e "$(echo $events | sed 's/\([a-z]*\)/syscalls:sys_enter_\1/g')" -x, -o "$out" -p "$pid" &
wait $rp
sleep 1
rm -rf /tmp/callrec-load
calls=$((rate * 10))
awk -F, -v n=$calls '/syscalls/ { sub("syscalls:sys_enter_", "", $3); printf "%-10s %8d  %6.2f per call\n", $3, $1, $1 / n }' "$out"
