"""The whole machine's busy CPU time, measured exactly where the kernel allows.

/proc/stat charges each scheduler tick to whatever the CPU is doing when it
fires. On a tickless kernel in a VM that is a sample, and a poor one: on the
benchmark machine (HZ=250, NO_HZ_IDLE, tick-based accounting) a shell loop
spinning on one core for 5 s shows up as 2.0 busy CPU-s and the machine's
two CPUs as 4 CPU-s in all, and a load that wakes on a 1 ms timer and sleeps
again before the tick is barely seen at all.

The idle driver's residency counters (/sys/devices/system/cpu/cpuN/cpuidle/
state*/time, microseconds) are exact: a CPU's busy time over an interval is
the interval minus the time it spent in idle states. A counter only grows
when its CPU leaves the idle state, so the reading thread moves to each CPU
in turn and reads that CPU's counters there: that CPU is running the
reader, so no idle period is open. The CPUs counted are those this process
may run on (all of them unless it was started under taskset or a cpuset). Busy time
then includes everything the CPU did: every process, interrupts, softirq
(packet delivery, a kernel-path relay), kernel threads (journal commits,
writeback), and time the hypervisor took from the guest.

Falls back to /proc/stat (user + nice + system + irq + softirq) where no
idle driver exposes residency; `source()` says which one was used.
"""
import glob
import os
import time

TICK = os.sysconf("SC_CLK_TCK")


def _cpus_with_residency():
    out = {}
    for d in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpuidle"):
        cpu = int(d.split("/")[-2][3:])
        states = sorted(glob.glob(os.path.join(d, "state[0-9]*", "time")))
        if states:
            out[cpu] = states
    return out


_RESIDENCY = _cpus_with_residency()


def source():
    """"cpuidle" (exact) or "proc_stat" (tick-sampled)."""
    if _RESIDENCY and set(_RESIDENCY) >= os.sched_getaffinity(0):
        return "cpuidle"
    return "proc_stat"


class Snapshot:
    """Per CPU: (monotonic seconds, idle seconds) read on that CPU, and the
    /proc/stat busy seconds (the fallback); `t` is when it was taken."""

    def __init__(self):
        self.kind = source()
        self.cpus = {}
        if self.kind == "cpuidle":
            allowed = os.sched_getaffinity(0)
            try:
                for cpu in sorted(allowed):
                    try:
                        os.sched_setaffinity(0, {cpu})
                        # Being scheduled there ends any idle period the CPU was in.
                        t = time.monotonic()
                        idle_us = sum(int(open(f).read()) for f in _RESIDENCY[cpu])
                    except OSError:
                        continue  # went offline: left out of both ends (busy_s)
                    self.cpus[cpu] = (t, idle_us / 1e6)
            finally:
                os.sched_setaffinity(0, allowed)
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        self.busy = (v[0] + v[1] + v[2] + v[5] + v[6]) / TICK
        self.t = time.monotonic()


def busy_s(a, b):
    """Busy CPU-seconds between two snapshots: over the CPUs read at both
    ends when both used residency (a CPU that went offline or came online in
    between is not counted), else /proc/stat."""
    if a.kind == "cpuidle" and b.kind == "cpuidle":
        both = a.cpus.keys() & b.cpus.keys()
        return sum((b.cpus[c][0] - a.cpus[c][0]) - (b.cpus[c][1] - a.cpus[c][1]) for c in both)
    return b.busy - a.busy


def cpus_counted(a, b):
    """How many CPUs busy_s counted (for a busy percentage)."""
    if a.kind == "cpuidle" and b.kind == "cpuidle":
        return len(a.cpus.keys() & b.cpus.keys())
    return os.cpu_count() or 1


def busy_cpu_s_of(fn):
    """Runs fn() and returns (its result, the machine's busy CPU-s meanwhile)."""
    a = Snapshot()
    r = fn()
    return r, busy_s(a, Snapshot())


if __name__ == "__main__":
    # Self-check: one core spinning for 2 s must read as about 2 busy CPU-s
    # (plus whatever else the machine does), an idle 2 s as about none.
    import sys
    print("source:", source())
    _, idle = busy_cpu_s_of(lambda: time.sleep(2))
    def spin():
        end = time.monotonic() + 2
        while time.monotonic() < end:
            pass
    _, spun = busy_cpu_s_of(spin)
    print(f"sleep 2 s: {idle:.3f} busy CPU-s; spin 2 s: {spun:.3f} busy CPU-s")
    sys.exit(0 if 1.8 <= spun - idle <= 2.3 else 1)
