//! callgen: SIP + RTP load generator for the callrec load benchmark. One
//! process plays both ends of every call — the caller (trunk) and the callee
//! (PBX) — with the call flow of the SIPp scenarios in benches/load/scenarios,
//! sends a tone per party (PCMA, 20 ms) and checks what arrives at the other
//! end. Prints one JSON summary (stdout, or --json FILE). See BENCHMARKS.md.

mod batch;
mod calls;
mod media;
mod report;
mod sip;
mod srtp;
mod tone;

use std::net::{SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const USAGE: &str = "callgen --calls N --rate CPS --hold SECONDS [options]
  --proxy IP:PORT         where the caller sends its INVITE (default 127.0.1.1:5060;
                          the callee's own address makes a back-to-back run without a proxy)
  --caller IP:PORT        caller (trunk) SIP address (default 127.0.1.3:5060)
  --callee IP:PORT        callee (PBX) SIP address (default 127.0.1.2:5060)
  --audio-seconds S       RTP per party after the ACK (default hold - 0.5, as run.py's pcaps)
  --caller-audio FILE     raw A-law the caller sends (default sip-scenarios/audio/caller-440.al)
  --callee-audio FILE     raw A-law the callee sends (default sip-scenarios/audio/callee-1000.al)
  --caller-hz F --callee-hz F   the tones in those files (default 440 and 1000)
  --rtp-sockets shared|per-call  one RTP socket per party and media thread (default),
                          or one per party and call
  --threads T             media threads (default 1)
  --tick-us U             send-time resolution in µs, a divisor of 20000 (default 1000): the
                          packets due in one tick leave together in one sendmmsg
  --caller-media rtp|srtp the caller's (trunk side's) media: plain RTP (default), or SRTP
                          with an SDES key per call (AES_CM_128_HMAC_SHA1_80); the callee
                          stays on plain RTP
  --srtp-corrupt-key      test switch: the caller protects and checks with keys one bit off
                          the ones in the SDP (every packet fails authentication)
  --service NUMBER --number NUMBER   called / calling user (default 200 / 03012345678)
  --json FILE             write the summary there instead of stdout";

struct Args {
    plan: calls::Plan,
    audio_files: [String; 2],
    hz: [f32; 2],
    threads: usize,
    tick_us: u64,
    json: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let repo_audio = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../sip-scenarios/audio/");
    let mut a = Args {
        plan: calls::Plan {
            proxy: "127.0.1.1:5060".parse().unwrap(),
            sides: [
                "127.0.1.3:5060".parse().unwrap(),
                "127.0.1.2:5060".parse().unwrap(),
            ],
            calls: 0,
            rate: 0.0,
            hold: Duration::ZERO,
            packets: 0,
            per_call_sockets: false,
            service: "200".into(),
            number: "03012345678".into(),
            srtp: false,
            srtp_corrupt_key: false,
        },
        audio_files: [
            format!("{repo_audio}caller-440.al"),
            format!("{repo_audio}callee-1000.al"),
        ],
        // What each party hears: the caller the callee's tone and vice versa.
        hz: [1000.0, 440.0],
        threads: 1,
        tick_us: 1000,
        json: None,
    };
    let mut audio_s: Option<f64> = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        if flag == "--srtp-corrupt-key" {
            a.plan.srtp_corrupt_key = true;
            continue;
        }
        let v = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {v}: {e}");
        let addr = |v: &str| v.parse::<SocketAddrV4>().map_err(|e| bad(&e));
        match flag.as_str() {
            "--proxy" => a.plan.proxy = addr(&v)?,
            "--caller" => a.plan.sides[0] = addr(&v)?,
            "--callee" => a.plan.sides[1] = addr(&v)?,
            "--calls" => a.plan.calls = v.parse().map_err(|e| bad(&e))?,
            "--rate" => a.plan.rate = v.parse().map_err(|e| bad(&e))?,
            "--hold" => a.plan.hold = Duration::from_secs_f64(v.parse().map_err(|e| bad(&e))?),
            "--audio-seconds" => audio_s = Some(v.parse().map_err(|e| bad(&e))?),
            "--caller-audio" => a.audio_files[0] = v,
            "--callee-audio" => a.audio_files[1] = v,
            // Each party listens for the other's tone.
            "--caller-hz" => a.hz[1] = v.parse().map_err(|e| bad(&e))?,
            "--callee-hz" => a.hz[0] = v.parse().map_err(|e| bad(&e))?,
            "--rtp-sockets" => {
                a.plan.per_call_sockets = match v.as_str() {
                    "shared" => false,
                    "per-call" => true,
                    _ => return Err(bad(&"expected shared or per-call")),
                }
            }
            "--threads" => a.threads = v.parse().map_err(|e| bad(&e))?,
            "--tick-us" => a.tick_us = v.parse().map_err(|e| bad(&e))?,
            "--caller-media" => {
                a.plan.srtp = match v.as_str() {
                    "rtp" => false,
                    "srtp" => true,
                    _ => return Err(bad(&"expected rtp or srtp")),
                }
            }
            "--service" => a.plan.service = v,
            "--number" => a.plan.number = v,
            "--json" => a.json = Some(v),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if a.tick_us == 0 || 20_000 % a.tick_us != 0 {
        return Err(format!("--tick-us must divide 20000\n{USAGE}"));
    }
    if a.plan.calls == 0 || a.plan.rate <= 0.0 || a.plan.hold.is_zero() || a.threads == 0 {
        return Err(format!(
            "--calls, --rate and --hold are required and positive\n{USAGE}"
        ));
    }
    let audio_s = audio_s.unwrap_or((a.plan.hold.as_secs_f64() - 0.5).max(0.2));
    a.plan.packets = (audio_s * 50.0).round() as u32;
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("callgen: {e}");
            ExitCode::from(3)
        }
    }
}

/// Runs the calls, prints the summary; Ok(false) when a call failed or its media check did.
fn run(args: Args) -> std::io::Result<bool> {
    if args.plan.per_call_sockets {
        raise_fd_limit();
    }
    let mut frames = [Vec::new(), Vec::new()];
    for (p, f) in args.audio_files.iter().enumerate() {
        let mut data =
            std::fs::read(f).map_err(|e| std::io::Error::new(e.kind(), format!("{f}: {e}")))?;
        data.truncate(data.len() / 160 * 160);
        if data.is_empty() {
            return Err(std::io::Error::other(format!(
                "{f}: shorter than one 20 ms frame"
            )));
        }
        frames[p] = data;
    }
    let packets = args.plan.packets;
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    let mut shared_ports = Vec::new();
    for _ in 0..args.threads {
        let mut ports = [0u16; 2];
        let shared = if args.plan.per_call_sockets {
            [None, None]
        } else {
            let mut s = [None, None];
            for p in 0..2 {
                let sock = UdpSocket::bind(SocketAddrV4::new(*args.plan.sides[p].ip(), 0))?;
                media::big_buffers(&sock, 16 << 20);
                ports[p] = sock.local_addr()?.port();
                s[p] = Some(sock);
            }
            s
        };
        shared_ports.push(ports);
        let audio = media::Audio {
            frames: frames.clone(),
            expect_hz: args.hz,
        };
        let engine = media::Engine::new(shared, audio, args.tick_us)?;
        let (tx, rx) = mpsc::channel();
        senders.push(tx);
        handles.push(
            std::thread::Builder::new()
                .name("callgen-rtp".into())
                .spawn(move || engine.run(rx))?,
        );
    }
    let plan = args.plan;
    let (calls_n, rate, hold) = (plan.calls, plan.rate, plan.hold);
    let caller_media = if plan.srtp { "srtp" } else { "rtp" };
    let deadline =
        hold + Duration::from_secs_f64(f64::from(calls_n) / rate) + Duration::from_secs(90);
    let sip = calls::Sip::new(plan, senders.clone(), shared_ports)?;
    let t0 = Instant::now();
    let out = sip.run(deadline)?;
    let wall = t0.elapsed().as_secs_f64();
    // Late packets of the last calls are still on their way.
    std::thread::sleep(Duration::from_millis(300));
    for s in &senders {
        let _ = s.send(media::Cmd::Stop);
    }
    let (mut streams, mut max_lag) = (Vec::new(), 0);
    for h in handles {
        let (s, lag) = h
            .join()
            .map_err(|_| std::io::Error::other("media thread panicked"))??;
        streams.extend(s);
        max_lag = max_lag.max(lag);
    }
    let (user, sys) = calls::rusage();
    let summary = report::build(
        &out,
        &streams,
        calls_n,
        rate,
        hold,
        packets,
        wall,
        (user, sys),
        max_lag,
        caller_media,
    );
    let ok = report::passed(&summary);
    match &args.json {
        Some(f) => std::fs::write(f, summary.text() + "\n")?,
        None => println!("{}", summary.text()),
    }
    Ok(ok)
}

/// Two sockets per call need more descriptors than the usual soft limit of 1024.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
