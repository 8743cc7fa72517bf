#!/usr/bin/env python3
"""The generator against itself, without a stack: callgen's caller sends its
INVITE to the callee's own address, so every call costs the generator what it
costs through a proxy (two streams sent, two received) and nothing relays.
The machine's busy CPU time over this run (machine_cpu.py: exact idle
residency where the idle driver has it, /proc/stat otherwise) is the baseline that a stack's run at the same load is compared
with: (machine CPU with the stack − machine CPU here) is what the stack cost
the machine, wherever the kernel charged it. On loopback that matters: the
receive path of a packet runs in the sender's softirq and is charged to the
sending process, so a kernel-path relay (a tc program) is charged to the
generator, not to callrec.

  direct.py --calls N --hold S [--results DIR] [--callgen-bin PATH]
"""
import argparse
import json
import os
import subprocess
import time

import machine_cpu

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, required=True)
    ap.add_argument("--hold", type=float, default=60)
    ap.add_argument("--results", default=os.path.join(HERE, "results", "kernel"))
    ap.add_argument("--callgen-bin", default=os.path.join(HERE, "callgen", "target", "release", "callgen"))
    a = ap.parse_args()
    os.makedirs(a.results, exist_ok=True)
    rate = max(1, a.calls // 10)
    audio = os.path.join(HERE, "..", "..", "sip-scenarios", "audio")
    cmd = [a.callgen_bin, "--proxy", "127.0.1.2:5060", "--caller", "127.0.1.3:5060",
           "--callee", "127.0.1.2:5060", "--calls", str(a.calls), "--rate", str(rate),
           "--hold", str(a.hold), "--audio-seconds", str(max(0.2, a.hold - 0.5)),
           "--caller-audio", os.path.join(audio, "caller-440.al"),
           "--callee-audio", os.path.join(audio, "callee-1000.al")]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    m0, t0 = machine_cpu.Snapshot(), time.time()
    # the same scheduling as run.py --autogroup-nice -10 gives the generator
    p = subprocess.run(["setsid", "sh", "-c", 'echo -10 > /proc/self/autogroup; exec "$@"', "sh"] + cmd,
                       capture_output=True, text=True)
    m1, t1 = machine_cpu.Snapshot(), time.time()
    busy = machine_cpu.busy_s(m0, m1)
    summary = json.loads(p.stdout) if p.stdout.strip().startswith("{") else {}
    call_min = a.calls * a.hold / 60
    res = {"stack": "none (callgen against itself)", "calls": a.calls, "hold_s": a.hold,
           "rate_cps": rate, "started": started, "wall_s": round(t1 - t0, 2),
           "machine_cpu_s": round(busy, 3), "machine_cpu_source": m0.kind,
           "machine_cpu_s_per_call_minute": round(busy / call_min, 5),
           "generator_cpu_s": summary.get("cpu", {}).get("total_s"),
           "exit": p.returncode, "command": cmd, "callgen": summary}
    out = os.path.join(a.results, time.strftime("%Y%m%d-%H%M%S") + f"-direct-{a.calls}.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"direct N={a.calls}: machine {res['machine_cpu_s']} CPU-s = "
          f"{res['machine_cpu_s_per_call_minute']} per call-minute, callgen {res['generator_cpu_s']} s, "
          f"loss {summary.get('loss_pct')} %, failed {summary.get('calls_failed')} ({out})")


if __name__ == "__main__":
    main()
