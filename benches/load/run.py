#!/usr/bin/env python3
"""Load harness for callrec and the peer stack (Kamailio + rtpengine +
rtpengine-recording). Python 3 standard library only. See BENCHMARKS.md.

Every call: SIPp caller (127.0.1.3, "trunk") -> proxy (127.0.1.1) -> SIPp callee
(127.0.1.2, "PBX"), PCMA 20 ms RTP both ways for the hold time (SIPp's
play_pcap_audio with a pcap per side made by mkpcap.py, so caller and callee
have different SSRCs), BYE from the caller. Both stacks record every call: callrec
in stereo (sealed sets), the peer as a 4-channel WAV per call (output-mixed,
mix-method=channels; caller and callee on channels 0 and 1).

  run.py load   --stack callrec|peer --calls N --hold SECONDS [--rate CPS]
  run.py series --stack callrec|peer|both --steps 50,100,200 --hold SECONDS [--stop-on-degrade]
  run.py cps    --stack callrec|peer --rates 50,100,200 [--seconds 10] [--hold-ms 2000]
  run.py report RESULT.json...        (markdown tables from result files)

Common options: --work DIR (scratch, default /tmp/callrec-load), --results DIR
(JSON per run, default benches/load/results), --callrec PATH (release binary,
default $CARGO_TARGET_DIR/release/callrec), --perf SECONDS (perf record the
proxy for that long at the plateau of a load run; callrec only; with
--perf-at N only in the run with N calls),
--generator sipp|callgen (who places and answers the calls: SIPp caller + callee,
the default, or benches/load/callgen, one process of our own for both sides, with
--callgen-bin PATH, --callgen-threads N; its JSON summary is kept in the result),
--trunk-media rtp|srtp (srtp: SRTP with SDES keys on the trunk leg, callgen's
caller offering a fresh key per call and callrec terminating it, the PBX leg
plain RTP; callrec with --generator callgen only; the result's trunk_media
says which), --kernel-relay IFACE (callrec relays plain RTP in the kernel at
ingress of IFACE, lo for these runs; a build with --features kernel-relay;
the result's kernel_relay says which), --keep (keep recordings), --rtpstream (RTP from SIPp's rtp_stream as in
sip-scenarios/, where caller and callee of a call share one SSRC; loss is
then counted against what the stack received, not what SIPp sent).

What one load run measures (from the moment the caller starts until every
recording is finished, i.e. sealed (.sig) for callrec, WAV closed for the peer):
  - CPU seconds (utime+stime from /proc/PID/stat) of the stack's processes
    (callrec alone; kamailio main+children, rtpengine, rtpengine-recording),
    per recorded call-minute = CPU / (N * hold / 60)
  - the same from the whole machine's side: the machine's busy CPU time over
    the run minus the generator's own process CPU
    (machine_cpu_s_per_call_minute; counts kernel work done for the stack
    outside its processes, and any other load: loadavg_start/_end beside it).
    Busy time comes from the idle driver's residency counters, which are
    exact; /proc/stat is tick-sampled and on this kind of VM sees well under
    half of a bursty load (machine_cpu.py; machine_cpu_source says which)
  - per-thread CPU of callrec (/proc/PID/task/*/stat, by thread name)
  - memory at the plateau (all N calls up) minus idle, per call: VmRSS for
    callrec, PSS (smaps_rollup) summed over the peer's processes
  - failed calls (SIPp caller and callee), setup time INVITE -> 200 (SIPp rtd 1,
    -trace_rtt: median, p95, max), SIPp's own CPU, whole machine busy %
  - loss: callrec from the metadata (packets, lost, late_dropped,
    queue_dropped, trimmed_ms as 20 ms packets) against the packets SIPp sent; the peer from the shim's
    counters (packets rtpengine handed to the "kernel" vs. delivered to the
    recording daemon) against the packets SIPp sent; for both, zero-filled
    samples in a sample of the WAV files (A-law never decodes to 0, so an
    exact 0 inside the recording is a gap filled by the recorder)
  - packets dropped at full UDP receive buffers of the stack's media sockets
    (/proc/net/udp "drops", sampled once a second per socket): audio that
    arrived faster than the stack read it
  - sealing latency (callrec): .sig mtime minus the metadata's times.end
"""
import argparse
import array
import datetime
import json
import os
import shlex
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

import machine_cpu

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SCEN = os.path.join(HERE, "scenarios")
PEER = os.path.join(HERE, "peer")
AUDIO = os.path.join(REPO, "sip-scenarios", "audio")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# CALLREC_LOAD_NET=127.0.3 moves all three to another loopback /24, so two
# harnesses can run on one machine without taking each other's ports.
_NET = os.environ.get("CALLREC_LOAD_NET", "127.0.1")
PROXY_IP, PBX_IP, TRUNK_IP = f"{_NET}.1", f"{_NET}.2", f"{_NET}.3"
CALLREC_SIP, KAM_SIP, SIPP_PORT = 5060, 5070, 5060
ADMIN_PORT, NG_PORT = 8089, 2223
PROXY_RTP = (40000, 49999)
SIPP_MP = 50000
CALLER_SSRC, CALLEE_SSRC = 0x11110001, 0x22220002


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# Nice of the autogroup (session) of every process run.py starts (--autogroup-nice).
AUTOGROUP_NICE = [0]


def raise_limits():
    # Each process starts its own session, so its own autogroup: on a machine
    # shared with other work, Linux gives every session an equal share, and a
    # negative nice lets the measured processes run when they want to (their
    # CPU is counted from their own accounting either way).
    if AUTOGROUP_NICE[0]:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(AUTOGROUP_NICE[0]))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


# ---------------------------------------------------------------- /proc


def proc_cpu(pid):
    """utime+stime of a process in seconds, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / TICK
    except OSError:
        return None


def thread_cpu(pid):
    """{tid: (thread name, cpu seconds)} for the process's threads."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        name = s[s.index("(") + 1:s.rindex(")")]
        name = re.sub(r"[-_ ]?\d+$", "", name) or name
        parts = s.rsplit(")", 1)[1].split()
        out[tid] = (name, (int(parts[11]) + int(parts[12])) / TICK)
    return out


class ThreadTracker:
    """CPU per thread name, sampled every second so that short-lived threads
    (callrec's per-call recorder threads) are counted up to their last sample."""

    def __init__(self, pid):
        self.pid = pid
        self.first = thread_cpu(pid)
        self.last = dict(self.first)

    def sample(self):
        self.last.update(thread_cpu(self.pid))

    def by_name(self):
        out = {}
        for tid, (name, cpu) in self.last.items():
            base = self.first.get(tid, (name, 0.0))[1]
            out[name] = out.get(name, 0.0) + cpu - base
        return out


def children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            kids.append(int(d))
    return kids


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def udp_errors():
    """(InErrors, RcvbufErrors) of the whole machine's UDP, /proc/net/snmp"""
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Udp:")]
    d = dict(zip(lines[0][1:], (int(x) for x in lines[1][1:])))
    return d.get("InErrors", 0), d.get("RcvbufErrors", 0)


def udp_socket_drops():
    """{inode: (group, drops)} of the UDP sockets that dropped packets (full
    receive buffer), /proc/net/udp: group "stack" for the stack's media ports
    (PROXY_RTP, either stack), "sipp_caller"/"sipp_callee" for SIPp's sockets"""
    out = {}
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            c = line.split()
            drops = int(c[12])
            if not drops:
                continue
            hexip, hexport = c[1].split(":")
            ip = ".".join(str(b) for b in reversed(bytes.fromhex(hexip)))
            port = int(hexport, 16)
            if PROXY_RTP[0] <= port <= PROXY_RTP[1]:
                group = "stack"
            elif ip == TRUNK_IP:
                group = "sipp_caller"
            elif ip == PBX_IP:
                group = "sipp_callee"
            else:
                continue
            out[c[9]] = (group, drops)
    return out


def machine_info():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": os.uname().release,
            "mem_mb": os.sysconf("SC_PHYS_PAGES") * PAGE // (1 << 20)}


# ---------------------------------------------------------------- helpers


def wait_udp_bound(ip, port, pid=None, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        out = subprocess.run(["ss", "-Hulnp", f"src = {ip}:{port}"], capture_output=True, text=True).stdout
        if out.strip() and (pid is None or f"pid={pid}," in out):
            return True
        time.sleep(0.1)
    return False


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def render(src, dst, values):
    with open(src) as f:
        s = f.read()
    for k, v in values.items():
        s = s.replace("@" + k + "@", str(v))
    with open(dst, "w") as f:
        f.write(s)


def stop(proc, name, timeout=15.0):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{name} ({proc.pid}) did not stop on SIGTERM, SIGKILL")
        proc.kill()
        proc.wait()


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


# ---------------------------------------------------------------- stacks


class Callrec:
    name = "callrec"

    def __init__(self, work, binary, trunk_media="rtp", kernel_relay=None):
        self.work, self.binary, self.proc = work, binary, None
        self.trunk_media = trunk_media
        self.kernel_relay = kernel_relay
        self.data = os.path.join(work, "data")
        self.rec_dir = os.path.join(self.data, "recordings")

    def start(self):
        cmd = [self.binary, "run", "--listen", f"{PROXY_IP}:{CALLREC_SIP}",
               "--pbx", f"{PBX_IP}:{SIPP_PORT}", "--trunk", f"{TRUNK_IP}:{SIPP_PORT}",
               "--media-ip", PROXY_IP, "--rtp-ports", f"{PROXY_RTP[0]}-{PROXY_RTP[1]}",
               "--data-dir", self.data, "--admin-listen", f"{PROXY_IP}:{ADMIN_PORT}",
               "--log-level", "warn",
               # one generator is one source address: the per-source INVITE
               # limit (50/s by default) would refuse the ramp of a large load
               "--invite-rate-per-source", "0", "--max-calls", "0"]
        if self.trunk_media == "srtp":
            # SRTP terminated on the trunk leg, plain RTP to the PBX; the
            # generator's SIP is UDP, so SDES keys must be allowed over it
            cmd += ["--trunk-media", "srtp", "--pbx-media", "rtp", "--allow-sdes-over-udp"]
        if self.kernel_relay:
            # plain RTP relayed by the tc program (a build with --features kernel-relay)
            cmd += ["--kernel-relay", self.kernel_relay]
        # e.g. "--user 0" (a rule no call matches: nothing recorded, media not
        # anchored) to measure the proxy without its recordings
        cmd += shlex.split(os.environ.get("CALLREC_EXTRA_ARGS", ""))
        self.cmdline = cmd
        self.log = open(os.path.join(self.work, "callrec.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=raise_limits, start_new_session=True)
        end = time.time() + 60
        while time.time() < end:
            try:
                if http_get(f"http://{PROXY_IP}:{ADMIN_PORT}/health").strip() == "ok":
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("callrec did not come up; see " + self.log.name)
        if not wait_udp_bound(PROXY_IP, CALLREC_SIP, self.proc.pid):
            raise RuntimeError("callrec SIP port not bound")
        self.sip_port = CALLREC_SIP

    def pids(self):
        return {"callrec": [self.proc.pid]}

    def mem_kb(self):
        return rss_kb(self.proc.pid)

    def finished(self, n):
        try:
            return sum(1 for f in os.listdir(self.rec_dir) if f.endswith(".sig")) >= n
        except OSError:
            return n == 0

    def active(self):
        try:
            m = http_get(f"http://{PROXY_IP}:{ADMIN_PORT}/metrics")
            return int(float(re.search(r"^callrec_calls_active (\S+)", m, re.M).group(1)))
        except (OSError, AttributeError):
            return None

    def stop(self):
        stop(self.proc, "callrec")
        self.log.close()


class Peer:
    name = "peer"

    def __init__(self, work, record=True):
        self.work, self.record = work, record
        self.spool = os.path.join(work, "spool")
        self.rec_dir = os.path.join(work, "wav")
        self.shim_stats = os.path.join(work, "shim.stats")
        self.procs = {}

    def build_shim(self):
        so = os.path.join(self.work, "rtpe_proc_shim.so")
        subprocess.run(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", so,
                        os.path.join(PEER, "rtpe_proc_shim.c"), "-ldl", "-lpthread"], check=True)
        return so

    def start(self):
        os.makedirs(self.spool, exist_ok=True)
        os.makedirs(self.rec_dir, exist_ok=True)
        so = self.build_shim()
        threads = os.cpu_count()
        render(os.path.join(PEER, "rtpengine.conf"), os.path.join(self.work, "rtpengine.conf"),
               {"NG": f"{PROXY_IP}:{NG_PORT}", "PORT_MIN": PROXY_RTP[0], "PORT_MAX": PROXY_RTP[1],
                "THREADS": threads, "SPOOL": self.spool})
        render(os.path.join(PEER, "rtpengine-recording.conf"), os.path.join(self.work, "rtpengine-recording.conf"),
               {"SPOOL": self.spool, "OUT": self.rec_dir, "THREADS": threads})
        render(os.path.join(PEER, "kamailio.cfg"), os.path.join(self.work, "kamailio.cfg"),
               {"CHILDREN": 4, "LISTEN": f"{PROXY_IP}:{KAM_SIP}", "NG": f"{PROXY_IP}:{NG_PORT}",
                "RECORD": 1 if self.record else 0, "PBX_IP": PBX_IP,
                "TRUNK": f"{TRUNK_IP}:{SIPP_PORT}", "PBX": f"{PBX_IP}:{SIPP_PORT}"})
        env = dict(os.environ, LD_PRELOAD=so, RTPE_SHIM_STATS=self.shim_stats)
        self.logs = {}

        def spawn(name, cmd, env=None):
            self.logs[name] = open(os.path.join(self.work, name + ".log"), "w")
            self.procs[name] = subprocess.Popen(cmd, stdout=self.logs[name], stderr=subprocess.STDOUT,
                                                env=env, preexec_fn=raise_limits, start_new_session=True)

        self.cmdlines = {
            "rtpengine": ["rtpengine", "--config-file=" + os.path.join(self.work, "rtpengine.conf")],
            "rtpengine-recording": ["rtpengine-recording",
                                    "--config-file=" + os.path.join(self.work, "rtpengine-recording.conf")],
            "kamailio": ["kamailio", "-DD", "-E", "-f", os.path.join(self.work, "kamailio.cfg"),
                         "-m", "512", "-M", "32"],
        }
        spawn("rtpengine", self.cmdlines["rtpengine"], env)
        if not wait_udp_bound(PROXY_IP, NG_PORT, self.procs["rtpengine"].pid):
            raise RuntimeError("rtpengine did not bind its ng port")
        spawn("rtpengine-recording", self.cmdlines["rtpengine-recording"], env)
        spawn("kamailio", self.cmdlines["kamailio"])
        if not wait_udp_bound(PROXY_IP, KAM_SIP):
            raise RuntimeError("kamailio did not bind")
        time.sleep(1.0)
        self.kam_children = children(self.procs["kamailio"].pid)
        self.sip_port = KAM_SIP

    def pids(self):
        return {"kamailio": [self.procs["kamailio"].pid] + self.kam_children,
                "rtpengine": [self.procs["rtpengine"].pid],
                "rtpengine-recording": [self.procs["rtpengine-recording"].pid]}

    def mem_kb(self):
        return sum(pss_kb(p) for ps in self.pids().values() for p in ps)

    def finished(self, n):
        """every call's WAV is closed: no metadata file left in the spool and
        no WAV written to for 2 s"""
        try:
            if any(f.endswith(".meta") for f in os.listdir(self.spool)):
                return False
            wavs = [os.path.join(self.rec_dir, f) for f in os.listdir(self.rec_dir) if f.endswith(".wav")]
        except OSError:
            return False
        if len(wavs) < n:
            return False
        newest = max((os.stat(w).st_mtime for w in wavs), default=0)
        return time.time() - newest > 2.0

    def active(self):
        return None

    def stop(self):
        for name in ("kamailio", "rtpengine", "rtpengine-recording"):
            stop(self.procs.get(name), name)
        for f in self.logs.values():
            f.close()

    def shim(self):
        out = {}
        try:
            with open(self.shim_stats) as f:
                for line in f:
                    k, _, v = line.strip().partition("=")
                    out[k] = int(v)
        except OSError:
            pass
        return out


# ---------------------------------------------------------------- SIPp


def sipp_cmds(work, stack_port, calls, rate, hold_ms, media, timeout_s, rtpstream=False):
    sfx = ("-rtpstream" if rtpstream else "") if media else "-nomedia"
    common = ["-m", str(calls), "-nostdin", "-bind_local", "-trace_err", "-timeout", f"{timeout_s}s",
              "-timeout_error", "-max_recv_loops", "10000", "-max_sched_loops", "10000"]
    callee = ["sipp", "-sf", os.path.join(SCEN, f"callee{sfx}.xml"), "-i", PBX_IP, "-p", str(SIPP_PORT),
              "-mi", PBX_IP, "-mp", str(SIPP_MP), *common,
              "-error_file", os.path.join(work, "callee_errors.log")]
    caller = ["sipp", f"{PROXY_IP}:{stack_port}", "-sf", os.path.join(SCEN, f"caller{sfx}.xml"),
              "-i", TRUNK_IP, "-p", str(SIPP_PORT), "-mi", TRUNK_IP, "-mp", str(SIPP_MP),
              "-key", "caller", "03012345678", "-s", "200", "-d", str(hold_ms),
              "-r", str(rate), "-l", str(calls), *common,
              "-trace_rtt", "-rtt_freq", "1",
              "-error_file", os.path.join(work, "caller_errors.log")]
    return caller, callee


def sipp_counts(path):
    """(successful, failed, retransmissions) from the last screen SIPp printed"""
    succ = fail = None
    retrans = 0
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return None, None, None
    for m in re.finditer(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", text):
        succ = int(m.group(1))
    for m in re.finditer(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", text):
        fail = int(m.group(1))
    # last message table: "  INVITE ---------->  B-RTD1  N  R  ..." retrans column
    last = text.rsplit("Messages  Retrans", 1)
    if len(last) == 2:
        block = last[1].split("------ [+|-|*|/]", 1)[0].split("Test Terminated", 1)[0]
        for line in block.splitlines():
            m = re.match(r"\s*(\S.*?)\s+(-{3,}>|<-{3,})\s*(?:\S+\s+)?(\d+)\s+(\d+)", line)
            if m:
                retrans += int(m.group(4))
    return succ, fail, retrans


def rtd1_rows(work):
    """(time ms, response time ms) of every setup SIPp logged (rtd 1) in the
    run's *_rtt.csv files"""
    rows = []
    for f in os.listdir(work):
        if f.endswith("_rtt.csv"):
            with open(os.path.join(work, f)) as fh:
                for line in fh:
                    parts = line.strip().split(";")
                    if len(parts) >= 3 and parts[2].strip().lower() in ("rtd1", "1"):
                        try:
                            rows.append((float(parts[0]), float(parts[1])))
                        except ValueError:
                            pass
    return rows


def setup_rate(work):
    """calls per second actually set up: (n-1) / (last - first) over the
    times at which SIPp logged each setup (rtd 1)"""
    times = [t for t, _ in rtd1_rows(work)]
    if len(times) < 2 or max(times) <= min(times):
        return None
    return (len(times) - 1) / ((max(times) - min(times)) / 1000.0)


def rtt_values(work):
    return [v for _, v in rtd1_rows(work)]


# ---------------------------------------------------------------- analysis


def wav_gaps(path, channels_of_interest):
    """(samples in the audio span, zero samples inside it) per channel of interest"""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        return None
    pos, nch, fmt_ok, pcm = 12, None, False, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if cid == b"fmt ":
            nch = int.from_bytes(data[body + 2:body + 4], "little")
            fmt_ok = int.from_bytes(data[body + 14:body + 16], "little") == 16
        elif cid == b"data":
            end = len(data) if size in (0, 0xFFFFFFFF) or body + size > len(data) else body + size
            pcm = data[body:end]
            break
        pos = body + size + (size & 1)
    if not fmt_ok or pcm is None or not nch:
        return None
    a = array.array("h")
    a.frombytes(pcm[:len(pcm) - len(pcm) % (2 * nch)])
    out = []
    for ch in channels_of_interest:
        if ch >= nch:
            continue
        c = a[ch::nch]
        n = len(c)
        first = next((i for i in range(n) if c[i] != 0), None)
        if first is None:
            out.append((0, 0))
            continue
        last = n - 1 - next(i for i in range(n) if c[n - 1 - i] != 0)
        span = c[first:last + 1]
        out.append((len(span), span.count(0)))
    return out


def analyse_wavs(files, channels, max_files=60):
    files = sorted(files)[:max_files]
    span = zeros = 0
    spans = []
    for f in files:
        r = wav_gaps(f, channels)
        if not r:
            continue
        for s, z in r:
            span += s
            zeros += z
            spans.append(s)
    return {"files_checked": len(files), "samples": span, "zero_samples": zeros,
            "zero_fraction": (zeros / span) if span else None,
            "mean_channel_seconds": (statistics.mean(spans) / 8000.0) if spans else None}


def parse_time(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def callrec_metadata(rec_dir):
    tot = {"sets": 0, "packets": 0, "lost": 0, "late_dropped": 0, "queue_dropped": 0, "duplicates": 0,
           "trimmed_ms": 0}
    seal_lat = []
    for f in os.listdir(rec_dir):
        if not f.endswith(".json"):
            continue
        try:
            with open(os.path.join(rec_dir, f)) as fh:
                m = json.load(fh)
        except (OSError, ValueError):
            continue
        tot["sets"] += 1
        for party in ("caller", "callee"):
            st = m.get("media", {}).get(party, {})
            for k in ("packets", "lost", "late_dropped", "queue_dropped", "duplicates", "trimmed_ms"):
                tot[k] += int(st.get(k, 0) or 0)
        sig = os.path.join(rec_dir, f[:-5] + ".sha256.SHA256withRSA.sig")
        try:
            seal_lat.append(os.stat(sig).st_mtime - parse_time(m["times"]["end"]))
        except (OSError, KeyError, ValueError):
            pass
    return tot, seal_lat


# ---------------------------------------------------------------- one load run


def make_pcaps(work, seconds):
    for side, tone, ssrc in (("caller", "caller-440.al", CALLER_SSRC), ("callee", "callee-1000.al", CALLEE_SSRC)):
        subprocess.run([sys.executable, os.path.join(HERE, "mkpcap.py"), os.path.join(AUDIO, tone),
                        os.path.join(work, side + ".pcap"), str(seconds), hex(ssrc)], check=True)


def callgen_cmd(args, work, stack_port, calls, rate, hold, audio_s):
    """the generator of our own (benches/load/callgen): both parties in one
    process, the same addresses, flow and audio as the SIPp scenarios; audio_s 0
    = signalling only"""
    binary = args.callgen_bin
    if not os.path.exists(binary):
        subprocess.run(["cargo", "build", "--release", "--manifest-path",
                        os.path.join(HERE, "callgen", "Cargo.toml")], check=True)
    return [binary, "--proxy", f"{PROXY_IP}:{stack_port}", "--caller", f"{TRUNK_IP}:{SIPP_PORT}",
            "--callee", f"{PBX_IP}:{SIPP_PORT}", "--calls", str(calls), "--rate", str(rate),
            "--hold", str(hold), "--audio-seconds", str(audio_s),
            "--caller-audio", os.path.join(AUDIO, "caller-440.al"),
            "--callee-audio", os.path.join(AUDIO, "callee-1000.al"),
            "--threads", str(args.callgen_threads), "--rtp-sockets", args.callgen_rtp_sockets,
            "--tick-us", str(args.callgen_tick_us), "--caller-media", args.trunk_media,
            "--json", os.path.join(work, "callgen.json")]


def callgen_summary(work):
    try:
        with open(os.path.join(work, "callgen.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def gen_core_pct(r):
    return r.get("generator_core_pct", r.get("sipp_core_pct"))


def retrans(r):
    if "sipp" in r:
        return f"{r['sipp']['caller_retrans']}/{r['sipp']['callee_retrans']}"
    return "–"


def sipp_pids(procs):
    return [p.pid for p in procs if p.poll() is None]


def load_run(args, stack_name, calls, hold, rate, media=True, tag="load"):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = os.path.join(args.work, f"{stamp}-{stack_name}-{tag}-{calls}")
    os.makedirs(work)
    # audio for hold - 0.5 s: the last packet leaves well before the BYE even
    # when SIPp's pcap threads run a little late
    audio_s = max(0.2, hold - 0.5)
    pkts_per_party = int(round(audio_s * 50))
    rtpstream = media and args.rtpstream
    callgen = args.generator == "callgen"
    if rtpstream and callgen:
        raise SystemExit("--rtpstream is a SIPp mode; callgen always sends its own tone per party")
    if args.trunk_media == "srtp" and not (callgen and stack_name == "callrec" and media):
        raise SystemExit("--trunk-media srtp: callrec with --generator callgen and media only")
    if media and not rtpstream and not callgen:
        make_pcaps(work, audio_s)
    if rtpstream:  # the scenarios name audio/*.al relative to SIPp's working directory
        os.symlink(AUDIO, os.path.join(work, "audio"))
    sipp_cwd = work
    stack = Callrec(work, args.callrec, args.trunk_media, args.kernel_relay) if stack_name == "callrec" else Peer(work)
    if media and args.rtpstream:
        tag += "-rtpstream"
    if callgen:
        tag += "-callgen" + ("-percall" if args.callgen_rtp_sockets == "per-call" else "")
        tag += f"-tick{args.callgen_tick_us}us" if args.callgen_tick_us != 1000 else ""
    if args.trunk_media == "srtp":
        tag += "-srtp"
    if args.kernel_relay and stack_name == "callrec":
        tag += "-kernel"
    res = {"stack": stack_name, "kind": tag, "generator": args.generator,
           "trunk_media": args.trunk_media, "kernel_relay": args.kernel_relay if stack_name == "callrec" else None, "pbx_media": "rtp", "rtp_source": ("rtp_stream" if args.rtpstream else "pcap") if media else None, "calls": calls, "hold_s": hold, "rate_cps": rate,
           "media": media, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine_info(), "work": work}
    log(f"{stack_name}: {calls} calls, hold {hold} s, {rate} cps, media={media}; work {work}")
    stack.start()
    try:
        res["stack_cmd"] = getattr(stack, "cmdline", None) or getattr(stack, "cmdlines", None)
        time.sleep(1.0)
        pids = stack.pids()
        idle0 = sum(proc_cpu(p) or 0 for v in pids.values() for p in v)
        # The machine at rest (the stack idle, this harness, whatever else runs):
        # subtracted from the run's machine figure as a rate over its wall time.
        rest0 = machine_cpu.Snapshot()
        time.sleep(3.0)
        rest_rate = machine_cpu.busy_s(rest0, machine_cpu.Snapshot()) / 3.0
        res["machine_rest_cpu_pct_of_core"] = round(100.0 * rest_rate, 2)
        idle_cpu = sum(proc_cpu(p) or 0 for v in pids.values() for p in v) - idle0
        res["idle_cpu_pct_of_core"] = round(100.0 * idle_cpu / 3.0, 2)
        idle_mem = stack.mem_kb()
        cpu0 = {k: sum(proc_cpu(p) or 0 for p in v) for k, v in pids.items()}
        threads = ThreadTracker(pids["callrec"][0]) if stack_name == "callrec" else None
        m0 = machine_cpu.Snapshot()
        res["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
        res["autogroup_nice"] = AUTOGROUP_NICE[0]
        udp0 = udp_errors()
        if callgen:
            # one process plays caller and callee; its summary goes to callgen.json
            gen_cmd = callgen_cmd(args, work, stack.sip_port, calls, rate, hold, audio_s if media else 0)
            res["callgen_cmd"] = gen_cmd
            callee, callee_out = None, None
            caller_out = open(os.path.join(work, "callgen.out"), "w")
            t0 = time.time()
            caller = subprocess.Popen(gen_cmd, stdout=caller_out, stderr=subprocess.STDOUT,
                                      preexec_fn=raise_limits, start_new_session=True)
        else:
            caller_cmd, callee_cmd = sipp_cmds(work, stack.sip_port, calls, rate, int(hold * 1000), media,
                                               timeout_s=int(hold + calls / rate + 120), rtpstream=rtpstream)
            res["sipp_caller_cmd"], res["sipp_callee_cmd"] = caller_cmd, callee_cmd
            callee_out = open(os.path.join(work, "callee.out"), "w")
            caller_out = open(os.path.join(work, "caller.out"), "w")
            callee = subprocess.Popen(callee_cmd, cwd=sipp_cwd, stdout=callee_out, stderr=subprocess.STDOUT,
                                      preexec_fn=raise_limits, start_new_session=True)
            if not wait_udp_bound(PBX_IP, SIPP_PORT, callee.pid):
                raise RuntimeError("callee SIPp did not bind")
            t0 = time.time()
            caller = subprocess.Popen(caller_cmd, cwd=sipp_cwd, stdout=caller_out, stderr=subprocess.STDOUT,
                                      preexec_fn=raise_limits, start_new_session=True)
        sipp_cpu = {}
        drops0 = udp_socket_drops()  # sockets of earlier runs still open count from here
        drops = {}
        peak_mem, peak_active, samples = 0, 0, []
        plateau_from = calls / rate + 2.0
        plateau_to = hold - 1.0
        perf_done = False
        while caller.poll() is None:
            time.sleep(1.0)
            el = time.time() - t0
            for p in (caller, callee):
                if p is None:
                    continue
                c = proc_cpu(p.pid)
                if c is not None:
                    sipp_cpu[p.pid] = c
            if threads:
                threads.sample()
            for ino, (group, d) in udp_socket_drops().items():
                d -= drops0.get(ino, (group, 0))[1]
                if d > drops.get(ino, (group, 0))[1]:
                    drops[ino] = (group, d)
            act = stack.active()
            if act is not None:
                peak_active = max(peak_active, act)
            if plateau_from <= el <= plateau_to:
                mem = stack.mem_kb()
                peak_mem = max(peak_mem, mem)
                samples.append(mem)
                if (args.perf and not perf_done and el >= plateau_from + 2
                        and (not args.perf_at or calls == args.perf_at)):
                    perf_done = True
                    allp = ",".join(str(p) for v in pids.values() for p in v)
                    if stack_name == "callrec":
                        pf = os.path.join(work, "perf.data")
                        subprocess.run(["perf", "record", "-F", "199", "-g", "-o", pf, "-p", allp,
                                        "--", "sleep", str(args.perf)], capture_output=True)
                        res["perf_data"] = pf
                    # context switches and CPU over 5 s of the plateau, all of the stack's processes
                    st = subprocess.run(["perf", "stat", "-x", ";", "-e", "context-switches,task-clock,raw_syscalls:sys_enter", "-p", allp,
                                         "--", "sleep", "5"], capture_output=True, text=True).stderr
                    pstat = {}
                    for ln in st.splitlines():
                        f = ln.split(";")
                        if len(f) > 2 and f[0].replace(".", "", 1).isdigit():
                            pstat[f[2]] = float(f[0])
                    res["perf_stat_5s"] = pstat
            if el > hold + calls / rate + 180:
                log("caller overran; killing")
                caller.kill()
        t_caller_done = time.time()
        if callee is not None:
            try:
                callee.wait(30)
            except subprocess.TimeoutExpired:
                callee.kill()
                callee.wait()
            callee_out.close()
        caller_out.close()
        # wait until every recording is finished
        expect = calls if media or stack_name == "callrec" else 0
        if callgen:
            succ = callgen_summary(work).get("calls_ok")
        else:
            succ, fail, retr = sipp_counts(os.path.join(work, "caller.out"))
        expect = min(expect, succ or 0)
        end = time.time() + (120 if media else 30)
        while time.time() < end and not stack.finished(expect):
            time.sleep(0.25)
        t_done = time.time()
        res["recordings_finished"] = stack.finished(expect)
        cpu1 = {k: sum(proc_cpu(p) or 0 for p in v) for k, v in pids.items()}
        if threads:
            threads.sample()
        m1 = machine_cpu.Snapshot()
        res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        udp1 = udp_errors()
        res["udp_in_errors"], res["udp_rcvbuf_errors"] = udp1[0] - udp0[0], udp1[1] - udp0[1]
        # packets dropped at full socket receive buffers, sampled once a second per socket
        # (SIPp never reads the RTP sent to its pcap players: its two media sockets drop it all)
        res["socket_drops"] = {g: sum(d for gg, d in drops.values() if gg == g)
                               for g in ("stack", "sipp_caller", "sipp_callee")}
        res["socket_drops_stack_sockets"] = sum(1 for g, _ in drops.values() if g == "stack")
        res["finish_wait_s"] = round(t_done - t_caller_done, 2)
        res["wall_s"] = round(t_done - t0, 2)
    finally:
        stack.stop()
    cpu = {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0}
    total_cpu = sum(cpu.values())
    call_min = calls * hold / 60.0
    res["cpu_s"] = cpu
    res["cpu_s_total"] = round(total_cpu, 2)
    res["cpu_s_per_call_minute"] = round(total_cpu / call_min, 4) if media else None
    res["cpu_ms_per_call"] = round(1000 * total_cpu / calls, 3)
    if threads:
        by = threads.by_name()
        res["callrec_threads_cpu_s"] = {k: round(v, 2) for k, v in sorted(by.items()) if v >= 0.01}
        res["callrec_threads_unattributed_s"] = round(total_cpu - sum(by.values()), 2)
    busy = machine_cpu.busy_s(m0, m1)
    span = m1.t - m0.t  # what the two snapshots enclose, a little more than the run
    res["machine_cpu_source"] = m0.kind
    res["machine_busy_pct"] = round(100.0 * busy / (machine_cpu.cpus_counted(m0, m1) * span), 1)
    res["generator_cpu_s"] = round(sum(sipp_cpu.values()), 2)
    res["generator_core_pct"] = round(100.0 * sum(sipp_cpu.values()) / (t_caller_done - t0), 1)
    # The stack's CPU as the whole machine saw it: everything the machine did over
    # the run minus the generator's own processes. Includes kernel work done
    # outside the stack's processes (softirq), and also any other load on the
    # machine: read it beside loadavg_start/_end and the per-process figure.
    mach = busy - res["generator_cpu_s"]
    res["machine_cpu_s_minus_generator"] = round(mach, 2)
    res["machine_cpu_s_per_call_minute"] = round(mach / call_min, 4) if media else None
    # The same less the machine's rest rate over the run: what the load added.
    net = mach - rest_rate * span
    res["machine_net_cpu_s_minus_generator"] = round(net, 2)
    res["machine_net_cpu_s_per_call_minute"] = round(net / call_min, 4) if media else None
    res["mem_idle_kb"] = idle_mem
    res["mem_plateau_kb"] = peak_mem
    res["mem_kb_per_call"] = round((peak_mem - idle_mem) / calls, 1) if peak_mem else None
    res["mem_kind"] = "VmRSS" if stack_name == "callrec" else "PSS sum"
    res["peak_active_calls"] = peak_active or None
    if callgen:
        cg = callgen_summary(work)
        res["callgen"] = cg
        res["callgen_rc"] = caller.returncode
        res["failed_calls"] = ((cg.get("calls_failed") or 0) + sum((cg.get("callee_failures") or {}).values())
                               + max(0, calls - (cg.get("calls_ok") or 0) - (cg.get("calls_failed") or 0)))
        res["setup_rate_cps"] = cg.get("setup_rate_cps")
        res["setup_ms"] = {k: cg.get("setup_ms", {}).get(k) for k in ("n", "median", "p95", "max")}
    else:
        c_succ, c_fail, c_retr = sipp_counts(os.path.join(work, "caller.out"))
        e_succ, e_fail, e_retr = sipp_counts(os.path.join(work, "callee.out"))
        res["sipp"] = {"caller_successful": c_succ, "caller_failed": c_fail, "caller_retrans": c_retr,
                       "callee_successful": e_succ, "callee_failed": e_fail, "callee_retrans": e_retr,
                       "caller_rc": caller.returncode, "callee_rc": callee.returncode}
        res["failed_calls"] = (c_fail or 0) + (e_fail or 0) + max(0, calls - (c_succ or 0))
        res["setup_rate_cps"] = setup_rate(work)
        rtt = rtt_values(work)
        res["setup_ms"] = {"n": len(rtt), "median": pct(rtt, 50), "p95": pct(rtt, 95), "max": max(rtt) if rtt else None}
    if media:
        expected = calls * 2 * pkts_per_party
        if callgen and res["callgen"].get("packets_sent") is not None:
            # callgen counts what it handed to the kernel: exact, also when calls failed
            expected = res["callgen"]["packets_sent"]
        res["rtp_expected_packets"] = expected
        if stack_name == "callrec":
            tot, seal = callrec_metadata(stack.rec_dir)
            res["callrec_media"] = tot
            # audio trimmed by a timing correction, in 20 ms packets (the load's ptime)
            trimmed = tot["trimmed_ms"] / 20.0
            recorded = tot["packets"] - tot["late_dropped"] - tot["queue_dropped"] - trimmed
            res["recorder_drops"] = tot["late_dropped"] + tot["queue_dropped"] + trimmed
            if rtpstream:  # no exact count of sent packets: gaps and drops of what arrived
                base = tot["packets"] + tot["lost"]
                res["loss_pct"] = round(100.0 * (base - recorded) / base, 4) if base else None
            else:
                res["loss_pct"] = round(100.0 * (expected - recorded) / expected, 4)
            res["seal_latency_s"] = {"n": len(seal), "median": pct(seal, 50), "p95": pct(seal, 95),
                                     "max": max(seal) if seal else None}
            wavs = [os.path.join(stack.rec_dir, f) for f in os.listdir(stack.rec_dir) if f.endswith(".wav")]
            res["wav_check"] = analyse_wavs(wavs, (0, 1))
        else:
            sh = stack.shim()
            res["peer_shim"] = sh
            delivered = sh.get("sent", 0)
            res["recorder_drops"] = sh.get("queue_full", 0) + sh.get("held_dropped", 0) + sh.get("never_opened", 0)
            res["relayed_to_recorder_pct"] = round(100.0 * sh.get("packets", 0) / expected, 3)
            if rtpstream:  # no exact count of sent packets: of what rtpengine relayed
                base = sh.get("packets", 0)
                res["loss_pct"] = round(100.0 * (base - delivered) / base, 4) if base else None
            else:
                res["loss_pct"] = round(100.0 * (expected - delivered) / expected, 4)
            wavs = [os.path.join(stack.rec_dir, f) for f in os.listdir(stack.rec_dir) if f.endswith(".wav")]
            res["wav_files"] = len(wavs)
            res["wav_check"] = analyse_wavs(wavs, (0, 1))
    res["degraded"] = bool(res["failed_calls"] > 0 or (media and (res["loss_pct"] or 0) > 0.1))
    os.makedirs(args.results, exist_ok=True)
    out = os.path.join(args.results, f"{stamp}-{stack_name}-{tag}-{calls}.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    log(f"  -> {summary(res)}  ({out})")
    if not args.keep:
        for d in (os.path.join(work, "data", "recordings"), os.path.join(work, "wav")):
            shutil.rmtree(d, ignore_errors=True)
        for f in ("caller.pcap", "callee.pcap"):
            try:
                os.unlink(os.path.join(work, f))
            except OSError:
                pass
    return res


def summary(r):
    s = (f"{r['stack']} N={r['calls']} failed={r['failed_calls']} cpu={r['cpu_s_total']}s "
         f"machine={r['machine_busy_pct']}% {r.get('generator', 'sipp')}={gen_core_pct(r)}%core ")
    if r["media"]:
        s += f"cpu/call-min={r['cpu_s_per_call_minute']} (machine {r.get('machine_cpu_s_per_call_minute')}, net of rest {r.get('machine_net_cpu_s_per_call_minute')}) loss={r['loss_pct']}% mem/call={r['mem_kb_per_call']}kB "
    s += f"setup median={r['setup_ms']['median']}ms"
    return s


# ---------------------------------------------------------------- commands


def cmd_load(args):
    rate = args.rate or max(5, args.calls // 10)
    load_run(args, args.stack, args.calls, args.hold, rate)


def cmd_series(args):
    """steps of N concurrent calls (rate N/10, so all are up after 10 s); with
    --stack both the stacks alternate at each step; with --stop-on-degrade a
    stack leaves the series after its first degraded step (failed calls or
    loss > 0.1 %)"""
    stacks = ["callrec", "peer"] if args.stack == "both" else [args.stack]
    for n in [int(x) for x in args.steps.split(",")]:
        for st in list(stacks):
            rate = max(5, n // 10)
            r = load_run(args, st, n, args.hold, rate, tag="series")
            if r["degraded"] and args.stop_on_degrade:
                log(f"{st} degraded at {n}; it leaves the series")
                stacks.remove(st)
        if not stacks:
            break


def cmd_cps(args):
    best = None
    for rate in [int(x) for x in args.rates.split(",")]:
        calls = rate * args.seconds
        r = load_run(args, args.stack, calls, args.hold_ms / 1000.0, rate, media=False, tag=f"cps{rate}")
        achieved = r["setup_rate_cps"] or 0
        log(f"  cps {rate}: failed {r['failed_calls']}, achieved {achieved:.0f} cps, "
            f"retrans {retrans(r)}")
        if r["failed_calls"] > 0:
            break
        if achieved < 0.9 * rate:
            log(f"  SIPp reached only {achieved:.0f} of {rate} cps; stopping")
            break
        best = rate
    log(f"{args.stack}: highest rate with 0 failed calls: {best}")


def fmt(v, nd=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def cmd_report(args):
    """markdown tables: the step series (callrec, peer, ratio callrec/peer per
    step) and the call-rate ladder"""
    rows = []
    for p in args.files:
        with open(p) as f:
            rows.append(json.load(f))
    series = [r for r in rows if r["kind"] == "series"]
    steps = sorted({r["calls"] for r in series})
    by = {(r["stack"], r["calls"]): r for r in series}

    def line(label, get, nd=2, ratio=False):
        cells = []
        for n in steps:
            a, b = by.get(("callrec", n)), by.get(("peer", n))
            va = get(a) if a else None
            vb = get(b) if b else None
            if ratio:
                cells.append(fmt(va / vb, 2) if va is not None and vb else "–")
            else:
                cells.append(f"{fmt(va, nd)} / {fmt(vb, nd)}")
        print(f"| {label} | " + " | ".join(cells) + " |")

    if series:
        print("| concurrent calls (callrec / peer) | " + " | ".join(str(n) for n in steps) + " |")
        print("|---|" + "---|" * len(steps))
        line("CPU-s per recorded call-minute", lambda r: r["cpu_s_per_call_minute"], 3)
        line("**ratio callrec/peer, CPU per call-minute**", lambda r: r["cpu_s_per_call_minute"], ratio=True)
        line("whole machine minus generator, CPU-s per call-minute", lambda r: r.get("machine_cpu_s_per_call_minute"), 3)
        line("failed calls", lambda r: r["failed_calls"])
        line("audio not recorded, % of sent", lambda r: r["loss_pct"], 3)
        line("recorder drops (packets)", lambda r: r["recorder_drops"])
        line("dropped at the stack's full socket buffers (packets)",
             lambda r: r["socket_drops"]["stack"] if r.get("socket_drops") else None)
        line("zero-filled samples in WAVs, %", lambda r: 100.0 * r["wav_check"]["zero_fraction"]
             if r.get("wav_check") and r["wav_check"]["zero_fraction"] is not None else None, 3)
        line("memory per call, kB (RSS / PSS)", lambda r: r["mem_kb_per_call"], 0)
        line("**ratio callrec/peer, memory per call**", lambda r: r["mem_kb_per_call"], ratio=True)
        line("setup INVITE→200 median, ms", lambda r: r["setup_ms"]["median"], 0)
        line("setup p95, ms", lambda r: r["setup_ms"]["p95"], 0)
        line("setup max, ms", lambda r: r["setup_ms"]["max"], 0)
        line("sealing after BYE median, ms (callrec)", lambda r: 1000 * r["seal_latency_s"]["median"]
             if r.get("seal_latency_s") and r["seal_latency_s"]["median"] is not None else None, 0)
        line("sealing after BYE p95 / max, ms", lambda r: (f"{1000 * r['seal_latency_s']['p95']:.0f}/"
                                                      f"{1000 * r['seal_latency_s']['max']:.0f}")
             if r.get("seal_latency_s") and r["seal_latency_s"]["p95"] is not None else None)
        line("whole machine busy, %", lambda r: r["machine_busy_pct"], 0)
        line("load average at start", lambda r: (r.get("loadavg_start") or [None])[0])
        line("generator (SIPp both sides, or callgen) CPU, % of one core", gen_core_pct, 0)
        print()
        print("| step | callrec CPU-s by thread | peer CPU-s kamailio / rtpengine / recording |")
        print("|---|---|---|")
        for n in steps:
            a, b = by.get(("callrec", n)), by.get(("peer", n))
            ta = ", ".join(f"{k} {v}" for k, v in (a or {}).get("callrec_threads_cpu_s", {}).items())
            if a and a.get("callrec_threads_unattributed_s") is not None:
                ta += f", exited threads {a['callrec_threads_unattributed_s']}"
            tb = " / ".join(str(b["cpu_s"].get(k)) for k in ("kamailio", "rtpengine", "rtpengine-recording")) if b else "–"
            print(f"| {n} | {ta or '–'} (total {a['cpu_s_total'] if a else '–'}) | {tb} (total {b['cpu_s_total'] if b else '–'}) |")
    media_rows = sorted([r for r in rows if r["stack"] == "callrec" and r.get("generator") == "callgen"
                         and r["kind"].startswith("series") and r["media"]],
                        key=lambda r: (r["calls"], r.get("trunk_media", "rtp")))
    if media_rows:
        print()
        print("| calls | trunk media | CPU-s per recorded call-minute | machine minus generator | "
              "audio not recorded, % | failed calls | callgen SRTP auth failures | callgen CPU, % of one core |")
        print("|---|---|---|---|---|---|---|---|")
        for r in media_rows:
            cg = r.get("callgen") or {}
            print(f"| {r['calls']} | {r.get('trunk_media', 'rtp')} | {fmt(r['cpu_s_per_call_minute'], 4)} | "
                  f"{fmt(r.get('machine_cpu_s_per_call_minute'), 4)} | {fmt(r['loss_pct'], 4)} | "
                  f"{r['failed_calls']} | {fmt(cg.get('srtp_auth_failed'))} | {fmt(gen_core_pct(r), 1)} |")
    cps = sorted([r for r in rows if r["kind"].startswith("cps")], key=lambda r: (r["stack"], r["rate_cps"]))
    if cps:
        print()
        print("| stack | offered cps | achieved cps | calls | failed | retrans caller/callee | CPU ms per call | "
              "setup median / p95 / max, ms | machine busy % |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in cps:
            sm = r["setup_ms"]
            print(f"| {r['stack']} | {r['rate_cps']} | {fmt(r.get('setup_rate_cps'), 0)} | {r['calls']} | "
                  f"{r['failed_calls']} | {retrans(r)} | "
                  f"{fmt(r['cpu_ms_per_call'], 3)} | {fmt(sm['median'], 0)} / {fmt(sm['p95'], 0)} / "
                  f"{fmt(sm['max'], 0)} | {fmt(r['machine_busy_pct'], 0)} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/callrec-load")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--callrec", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")),
                                                      "release", "callrec"))
    ap.add_argument("--perf", type=int, default=0)
    ap.add_argument("--perf-at", type=int, default=0, help="only in the load run with this many calls")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--generator", choices=("sipp", "callgen"), default="sipp",
                    help="SIPp caller + callee (default), or callgen (benches/load/callgen), one process for both")
    ap.add_argument("--callgen-bin", default=os.path.join(HERE, "callgen", "target", "release", "callgen"),
                    help="callgen binary (built with cargo --release when missing)")
    ap.add_argument("--callgen-threads", type=int, default=1, help="callgen's RTP threads")
    ap.add_argument("--callgen-tick-us", type=int, default=1000,
                    help="callgen's send-time resolution in µs (packets due in one tick leave together)")
    ap.add_argument("--callgen-rtp-sockets", choices=("shared", "per-call"), default="shared",
                    help="callgen's RTP sockets: one per party (default) or one per party and call, like SIPp")
    ap.add_argument("--autogroup-nice", type=int, default=0,
                    help="nice of the stack's and the generator's autogroups (e.g. -10 on a shared machine)")
    ap.add_argument("--kernel-relay", metavar="IFACE", default=None,
                    help="callrec relays plain RTP in the kernel at ingress of IFACE (lo here); needs a build with --features kernel-relay")
    ap.add_argument("--trunk-media", choices=("rtp", "srtp"), default="rtp",
                    help="media on the trunk leg: plain RTP, or SRTP (SDES) offered by callgen's caller "
                         "and terminated by callrec (callrec with --generator callgen only)")
    ap.add_argument("--rtpstream", action="store_true",
                    help="RTP from SIPp's rtp_stream (shared SSRC per call) instead of the pcaps")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("load")
    p.add_argument("--stack", choices=("callrec", "peer"), required=True)
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--hold", type=float, required=True)
    p.add_argument("--rate", type=int)
    p.set_defaults(fn=cmd_load)
    p = sub.add_parser("series")
    p.add_argument("--stack", choices=("callrec", "peer", "both"), required=True)
    p.add_argument("--steps", required=True)
    p.add_argument("--hold", type=float, default=60)
    p.add_argument("--stop-on-degrade", action="store_true")
    p.set_defaults(fn=cmd_series)
    p = sub.add_parser("cps")
    p.add_argument("--stack", choices=("callrec", "peer"), required=True)
    p.add_argument("--rates", required=True)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--hold-ms", type=int, default=2000)
    p.set_defaults(fn=cmd_cps)
    p = sub.add_parser("report")
    p.add_argument("files", nargs="+")
    p.set_defaults(fn=cmd_report)
    args = ap.parse_args()
    AUTOGROUP_NICE[0] = args.autogroup_nice
    if args.cmd != "report":  # report only reads result files
        os.makedirs(args.work, exist_ok=True)
    args.fn(args)


if __name__ == "__main__":
    main()
