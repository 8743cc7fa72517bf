#!/usr/bin/env python3
"""Table of the kernel-relay runs (benches/load/kernel.sh): per load, the
userspace relay and the kernel path beside the generator's run against
itself (direct.py). "Stack CPU" is callrec's own process CPU plus what the
generator's process spent more than in its direct run at the same load: on
loopback the receive path of every packet runs in the softirq of the process
that sent it, so the kernel path's work (and the delivery into callrec's
sockets) is charged to the generator. Process CPU is the scheduler's exact
runtime; the machine-wide /proc/stat figure is tick-sampled and misses most
of a load that wakes on a 1 ms timer (see BENCHMARKS.md), so it is shown
but not used.

  kernel_report.py [RESULT.json ...]   (default: results/kernel/*.json)
"""
import glob
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def stamp(r):
    return time.mktime(time.strptime(r["started"], "%Y-%m-%dT%H:%M:%SZ"))


def main():
    files = sys.argv[1:] or sorted(glob.glob(os.path.join(HERE, "results", "kernel", "*.json")))
    runs = [json.load(open(f)) | {"file": os.path.basename(f)} for f in files]
    runs.sort(key=lambda r: r["started"])
    directs = [r for r in runs if r["stack"].startswith("none")]
    print("| started (UTC) | calls | relay | callrec process CPU-s / call-min | generator CPU-s (direct run) | stack CPU-s / call-min | audio not recorded % | failed | machine /proc/stat per call-min (not used) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        if r["stack"] != "callrec":
            continue
        n = r["calls"]
        # the generator's baseline from the same stretch of time: the
        # direct run at this load nearest to this run
        same = [x for x in directs if x["calls"] == n]
        d = min(same, key=lambda x: abs(stamp(x) - stamp(r)), default=None)
        call_min = n * r["hold_s"] / 60
        own = r["cpu_s"]["callrec"]
        gen = r["generator_cpu_s"]
        if d and d.get("generator_cpu_s") is not None:
            stack = (own + gen - d["generator_cpu_s"]) / call_min
            gen_s = f"{gen:.1f} ({d['generator_cpu_s']:.1f})"
            stack_s = f"{stack:.4f}"
        else:
            gen_s, stack_s = f"{gen:.1f} (–)", "–"
        relay = "kernel" if r.get("kernel_relay") else "userspace"
        print(f"| {r['started'][11:16]} | {n} | {relay} | {r['cpu_s_per_call_minute']:.4f} | {gen_s} | {stack_s} | "
              f"{r['loss_pct']} | {r['failed_calls']} | {r.get('machine_cpu_s_per_call_minute')} |")


if __name__ == "__main__":
    main()
