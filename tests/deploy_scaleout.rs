//! The scale-out example of `deploy/kamailio/` with real Kamailio: Kamailio's
//! dispatcher in front of two callrec
//! instances, SIPp on both ends.
//!
//! Layout on loopback:
//!
//! ```text
//! SIPp caller 127.0.0.3 ──▶ Kamailio 127.0.0.1:K ──▶ callrec A 127.0.0.1:PA ──▶ SIPp callee 127.0.0.2
//!                                              └──▶ callrec B 127.0.0.1:PB ──┘
//! ```
//!
//! Kamailio runs the shipped `deploy/kamailio/kamailio.cfg` unchanged; only its
//! pre-processor defines (listen address, dispatcher list, ping interval,
//! timers, control socket) are set with `-A`. Both instances see requests from
//! Kamailio's address, which is not the PBX's, so every call is incoming and
//! goes to `--pbx` (the callee). Kamailio record-routes, and SIPp sends every
//! in-dialog request to Kamailio, so ACK and BYE pass it too.
//!
//! Asserted:
//! 1. `kamailio -c` accepts the shipped config, with its defaults and with the
//!    test's defines; the shipped dispatcher.list has the documented format.
//! 2. 10 calls through Kamailio: SIPp caller and callee count 10 successful
//!    calls (exit 0); both instances took calls (their /api/calls/recent lists
//!    answered, incoming calls, 10 together); each instance holds exactly as
//!    many sealed sets as it answered calls; Kamailio never had to fail over;
//!    the ACK and the BYE of every call passed Kamailio.
//! 3. Instance B stopped: Kamailio's OPTIONS keepalives mark it down (the
//!    config's dst-down event line in Kamailio's log). 5 more calls all
//!    succeed, all land on A (5 more answered calls and 5 more sealed sets
//!    there), Kamailio sent none of them to B first (no failover line), and
//!    their ACKs and BYEs passed Kamailio too.
//! 4. Failover before the keepalives notice (a second test): the set holds
//!    A and an address where nothing answers, keepalives every 30 s. The one
//!    call round robin sends to the silent address is retried on A after the
//!    1 s timer (one "retrying INVITE … after 408" line, the address logged
//!    down); all 4 calls succeed and are recorded on A.
//! 5. The other direction of the route set (a third test): when the PBX side
//!    hangs up, the instance's BYE to the caller follows the Record-Route
//!    Kamailio put into the INVITE (a "along the route set" line per call).
//!
//! The test installs nothing: `deploy/test.sh` installs the Debian package
//! `kamailio` (and SIPp) before running the tests.
//!
//! Over 600 lines: four scenarios, each starting Kamailio and several
//! instances and following calls and their sets across them.

mod common;

use common::*;
use std::fs::{self, File};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The Kamailio binary of the Debian package, or a panic telling how to get it.
fn require_kamailio() -> PathBuf {
    let fixed = PathBuf::from("/usr/sbin/kamailio");
    if fixed.is_file() {
        return fixed;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("kamailio"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "kamailio (Debian package kamailio) is not installed: run ./deploy/test.sh, \
                 which installs the test peers and then runs the tests"
            )
        })
}

fn kamailio_dir() -> PathBuf {
    repo_dir().join("deploy").join("kamailio")
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Sends `sig` (e.g. "TERM") to a process group or process with kill(1).
fn send_signal(sig: &str, target: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}").as_str(), "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `grace` for `child` to exit.
fn wait_exit(child: &mut Child, grace: Duration) -> bool {
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

// ---------------------------------------------------------------------------
// callrec instances
// ---------------------------------------------------------------------------

/// One callrec instance: the common `Proxy` with given `--pbx` and `--trunk`,
/// because here both instances must send to the same callee.
struct Instance {
    name: &'static str,
    proxy: Proxy,
    sip: SocketAddr,
}

impl Instance {
    fn start(name: &'static str, pbx: SocketAddr, trunk: SocketAddr) -> Instance {
        let proxy = Proxy::builder()
            .pbx(pbx)
            .trunk(trunk, &trunk.to_string())
            .rtp_ports(200)
            // Calls arrive from Kamailio, which shares the instances' address.
            .arg("--trusted-source")
            .arg(&PROXY_IP.to_string())
            .start();
        let sip = proxy.sip_addr();
        Instance { name, proxy, sip }
    }

    fn is_running(&mut self) -> bool {
        self.proxy.is_running()
    }

    fn log_tail(&self, n: usize) -> String {
        format!("callrec {}: {}", self.name, self.proxy.log_tail(n))
    }

    /// Finished calls that were answered (final INVITE status 2xx).
    fn answered(&self) -> Vec<serde_json::Value> {
        self.proxy
            .recent_calls()
            .into_iter()
            .filter(|c| {
                c["status"]
                    .as_u64()
                    .is_some_and(|s| (200..300).contains(&s))
            })
            .collect()
    }

    /// Complete (signed) sets anywhere under the recordings folder.
    fn sealed_sets(&self) -> usize {
        fn walk(dir: &Path, n: &mut usize) {
            let Ok(rd) = fs::read_dir(dir) else { return };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, n);
                } else if p.to_string_lossy().ends_with(".sha256.SHA256withRSA.sig") {
                    *n += 1;
                }
            }
        }
        let mut n = 0;
        walk(&self.proxy.data_dir().join("recordings"), &mut n);
        n
    }

    /// SIGTERM, then SIGKILL if it is still running after 10 s.
    fn stop(&mut self) {
        if self.proxy.terminate(Duration::from_secs(10)).is_none() {
            self.proxy.kill_hard();
        }
    }
}

// ---------------------------------------------------------------------------
// Kamailio
// ---------------------------------------------------------------------------

/// Kamailio in the foreground (`-DD -E`) in its own process group, so that
/// stopping it also stops the worker processes it forks.
struct Kamailio {
    child: Child,
    sip: SocketAddr,
    log_path: PathBuf,
    command: String,
}

/// The `-A` defines that adapt the shipped config to the test.
fn test_defines(sip: SocketAddr, list: &Path, run_dir: &Path, ping_interval: u32) -> Vec<String> {
    [
        format!("LISTEN_UDP=udp:{sip}"),
        format!("DS_LIST_FILE=\"{}\"", list.display()),
        format!("DS_PING_INTERVAL={ping_interval}"),
        "FR_TIMER_MS=1000".to_string(),
        format!(
            "CTL_SOCKET=\"unix:{}\"",
            run_dir.join("kamailio_ctl").display()
        ),
        "CHILDREN=2".to_string(),
    ]
    .into_iter()
    .flat_map(|d| ["-A".to_string(), d])
    .collect()
}

/// `kamailio -c -f CFG ARGS…`: (success, output).
fn kamailio_check(cfg: &Path, extra: &[String]) -> (bool, String) {
    let out = Command::new(require_kamailio())
        .arg("-c")
        .arg("-f")
        .arg(cfg)
        .args(extra)
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run kamailio -c");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && text.contains("config file ok"),
        text,
    )
}

impl Kamailio {
    /// Kamailio with the shipped config dispatching to `destinations`, which
    /// it probes every `ping_interval` seconds.
    fn start(dir: &TestDir, destinations: &[SocketAddr], ping_interval: u32) -> Kamailio {
        let sip = SocketAddr::from((PROXY_IP, free_port()));
        let run_dir = dir.join("run");
        fs::create_dir_all(&run_dir).expect("kamailio runtime dir");
        let list = dir.join("dispatcher.list");
        let mut text = String::from("# written by tests/deploy_scaleout.rs\n");
        for (i, d) in destinations.iter().enumerate() {
            text.push_str(&format!("1 sip:{d} 0 0 duid=callrec-{i}\n"));
        }
        fs::write(&list, text).expect("write dispatcher.list");
        let cfg = kamailio_dir().join("kamailio.cfg");
        let defines = test_defines(sip, &list, &run_dir, ping_interval);

        let (ok, out) = kamailio_check(&cfg, &defines);
        assert!(
            ok,
            "kamailio -c rejects the config with the test's defines\n{out}"
        );

        let log_path = dir.join("kamailio.log");
        let log = File::create(&log_path).expect("kamailio log file");
        let mut args: Vec<String> = vec![
            "-DD".into(),
            "-E".into(),
            "-f".into(),
            cfg.display().to_string(),
            "-Y".into(),
            run_dir.display().to_string(),
            "-w".into(),
            run_dir.display().to_string(),
            "-m".into(),
            "32".into(),
            "-M".into(),
            "4".into(),
        ];
        args.extend(defines);
        let command = format!("kamailio {}", args.join(" "));
        let child = Command::new(require_kamailio())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
        let mut k = Kamailio {
            child,
            sip,
            log_path,
            command,
        };
        let SocketAddr::V4(sip4) = sip else {
            unreachable!("IPv4 in tests")
        };
        let up = wait_until(Duration::from_secs(15), || {
            matches!(k.child.try_wait(), Ok(Some(_))) || is_bound(sip4, false)
        });
        assert!(
            up && matches!(k.child.try_wait(), Ok(None)),
            "kamailio did not start listening on {sip}\ncommand: {}\n{}",
            k.command,
            k.log_tail(80)
        );
        // The first keepalive round must have found both instances alive: an
        // OPTIONS with a user part is dispatched to an instance, which answers.
        assert!(
            wait_until(Duration::from_secs(10), || sip_options_answered(
                k.sip,
                Duration::from_millis(500)
            )),
            "kamailio on {sip} does not relay OPTIONS to an instance\n{}",
            k.log_tail(80)
        );
        k
    }

    fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    fn log_tail(&self, n: usize) -> String {
        format!(
            "--- kamailio log {} ---\n{}",
            self.log_path.display(),
            last_lines(&self.log(), n)
        )
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        send_signal("TERM", &group);
        if !wait_exit(&mut self.child, Duration::from_secs(5)) {
            send_signal("KILL", &group);
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("kamailio command: {}\n{}", self.command, self.log_tail(200));
        }
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

/// `n` basic calls: SIPp caller on the trunk side sends to Kamailio, the
/// SIPp callee listens on the instances' `--pbx` address.
fn calls_through(kamailio: &Kamailio, pbx: SocketAddr, n: u32) -> CallOutcome {
    pair_through(kamailio, pbx, "basic", n)
}

/// `n` calls of scenario pair `name`, as `calls_through`.
fn pair_through(kamailio: &Kamailio, pbx: SocketAddr, name: &str, n: u32) -> CallOutcome {
    let run = CallRun::direct(pair(name))
        .caller_at(SocketAddr::from((TRUNK_IP, free_port())))
        .callee_at(pbx)
        .via(kamailio.sip)
        .calls(n)
        .rate(5.0)
        .timeout(Duration::from_secs(60));
    let out = run.run();
    if !(out.caller.success() && out.callee.success()) {
        eprintln!("{}", kamailio.log_tail(120));
    }
    out.assert_success();
    out
}

/// Waits until every instance listed has finished `want` answered calls and
/// sealed as many sets; returns (answered, sealed) per instance.
fn settle(instances: &[&Instance], want: usize) -> Vec<(usize, usize)> {
    let mut seen = Vec::new();
    let ok = wait_until(Duration::from_secs(30), || {
        seen = instances
            .iter()
            .map(|i| (i.answered().len(), i.sealed_sets()))
            .collect();
        let answered: usize = seen.iter().map(|s| s.0).sum();
        answered == want && seen.iter().all(|(a, s)| a == s)
    });
    assert!(
        ok,
        "expected {want} answered calls, each with a sealed set; (answered, sealed) per instance: {seen:?}\n{}",
        instances
            .iter()
            .map(|i| i.log_tail(40))
            .collect::<Vec<_>>()
            .join("\n")
    );
    seen
}

/// Every call Kamailio dispatched (its Call-ID from the "INVITE to" lines)
/// also had its ACK and its BYE pass Kamailio ("in-dialog ACK/BYE" lines,
/// whether they followed the route set or were relayed to the instance's
/// Contact). Returns the number of calls seen.
fn assert_dialogs_passed(kamailio: &Kamailio) -> usize {
    let log = kamailio.log();
    // log_prefix is "{<type> <cseq> <method> <call-id>} "
    let call_id = |l: &str| {
        l.split_once('{')
            .and_then(|(_, r)| r.split_once('}'))
            .and_then(|(inside, _)| inside.split_whitespace().nth(3))
            .map(str::to_string)
    };
    let invites: std::collections::BTreeSet<String> = log
        .lines()
        .filter(|l| l.contains("<script>: INVITE to "))
        .filter_map(call_id)
        .collect();
    for method in ["ACK", "BYE"] {
        let seen: std::collections::BTreeSet<String> = log
            .lines()
            .filter(|l| l.contains(&format!("<script>: in-dialog {method} ")))
            .filter_map(call_id)
            .collect();
        let missing: Vec<&String> = invites.difference(&seen).collect();
        assert!(
            missing.is_empty(),
            "the {method} of these calls did not pass Kamailio: {missing:?}\n{}",
            kamailio.log_tail(120)
        );
    }
    invites.len()
}

/// Calls Kamailio retried on another instance.
fn failovers(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("retrying INVITE "))
        .count()
}

#[test]
fn deploy_shipped_kamailio_files_are_valid() {
    let cfg = kamailio_dir().join("kamailio.cfg");
    let (ok, out) = kamailio_check(&cfg, &[]);
    assert!(
        ok,
        "kamailio -c rejects {} with its defaults\n{out}",
        cfg.display()
    );
    let (ok, out) = kamailio_check(&cfg, &["-A".into(), "WITH_TCP".into()]);
    assert!(
        ok,
        "kamailio -c rejects {} with WITH_TCP\n{out}",
        cfg.display()
    );

    // setid sip-uri [flags [priority [attrs]]]
    let list = read_lossy(&kamailio_dir().join("dispatcher.list"));
    let mut entries = 0;
    for line in list.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(
            f.len() >= 2
                && f[0].parse::<u32>().is_ok()
                && f[1].starts_with("sip:")
                && f.get(2).is_none_or(|v| v.parse::<u32>().is_ok())
                && f.get(3).is_none_or(|v| v.parse::<i32>().is_ok())
                && f.len() <= 5,
            "dispatcher.list line not in `setid sip-uri flags priority attrs` form: {line:?}"
        );
        assert_eq!(f[0], "1", "the config dispatches to set 1: {line:?}");
        entries += 1;
    }
    assert!(
        entries >= 2,
        "dispatcher.list should list several instances:\n{list}"
    );
}

#[test]
fn deploy_kamailio_dispatches_to_two_instances_and_fails_over() {
    let started = Instant::now();
    let dir = TestDir::new("scaleout");
    let pbx = SocketAddr::from((PBX_IP, free_port()));
    let trunk = SocketAddr::from((TRUNK_IP, free_port()));
    let a = Instance::start("A", pbx, trunk);
    let mut b = Instance::start("B", pbx, trunk);
    let kamailio = Kamailio::start(&dir, &[a.sip, b.sip], 1);

    // --- 10 calls over both instances -----------------------------------
    calls_through(&kamailio, pbx, 10);
    let counts = settle(&[&a, &b], 10);
    eprintln!("after 10 calls, (answered, sealed sets) on A, B: {counts:?}");
    assert!(
        counts.iter().all(|(answered, _)| *answered > 0),
        "round robin should give both instances calls: {counts:?}\n{}",
        kamailio.log_tail(60)
    );
    for inst in [&a, &b] {
        for call in inst.answered() {
            assert_eq!(
                call["direction"], "incoming",
                "calls from Kamailio's address are incoming on {}: {call}",
                inst.name
            );
        }
    }
    assert_eq!(
        failovers(&kamailio.log()),
        0,
        "no call should have needed a second instance\n{}",
        kamailio.log_tail(60)
    );
    assert_eq!(
        assert_dialogs_passed(&kamailio),
        10,
        "Kamailio should have dispatched 10 calls\n{}",
        kamailio.log_tail(60)
    );

    // --- B stops; Kamailio's keepalives take it out ------------------------
    let (a_answered, a_sealed) = counts[0];
    b.stop();
    assert!(!b.is_running(), "instance B did not stop");
    let down_line = format!("callrec instance down: sip:{}", b.sip);
    let marked = wait_until(Duration::from_secs(15), || {
        kamailio.log().contains(&down_line)
    });
    assert!(
        marked,
        "Kamailio did not mark the stopped instance down (expected a line with {down_line:?})\n{}",
        kamailio.log_tail(80)
    );
    let marked_after = started.elapsed();

    // --- 5 more calls, all on A ----------------------------------------------
    calls_through(&kamailio, pbx, 5);
    let after = settle(&[&a], a_answered + 5);
    assert_eq!(
        after[0],
        (a_answered + 5, a_sealed + 5),
        "all 5 calls should be answered and recorded on A"
    );
    assert_eq!(
        failovers(&kamailio.log()),
        0,
        "Kamailio sent a call to the stopped instance before failing over\n{}",
        kamailio.log_tail(80)
    );
    assert_eq!(
        assert_dialogs_passed(&kamailio),
        15,
        "Kamailio should have dispatched 15 calls in all\n{}",
        kamailio.log_tail(60)
    );
    eprintln!(
        "B marked down {:.1} s into the test; whole test {:.1} s",
        marked_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let SocketAddr::V4(b4) = b.sip else {
        unreachable!()
    };
    assert!(
        !is_bound(SocketAddrV4::new(*b4.ip(), b4.port()), false),
        "B's SIP port is still bound"
    );
}

/// Failover before the keepalives notice: the dispatcher set holds A and an
/// address where nothing listens, and keepalives are only every 30 s. Round
/// robin sends one of the first two calls to the silent address; after
/// FR_TIMER_MS without a reply the config marks it inactive and retries the
/// call on A. All calls succeed and are recorded on A; Kamailio logs exactly
/// one retry.
#[test]
fn deploy_kamailio_fails_over_when_an_instance_does_not_answer() {
    let dir = TestDir::new("failover");
    let pbx = SocketAddr::from((PBX_IP, free_port()));
    let trunk = SocketAddr::from((TRUNK_IP, free_port()));
    let a = Instance::start("A", pbx, trunk);
    let silent = SocketAddr::from((PROXY_IP, free_port()));
    let kamailio = Kamailio::start(&dir, &[a.sip, silent], 30);

    let out = calls_through(&kamailio, pbx, 4);
    let counts = settle(&[&a], 4);
    assert_eq!(counts[0], (4, 4), "all 4 calls answered and sealed on A");
    let log = kamailio.log();
    let retries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("retrying INVITE "))
        .collect();
    assert_eq!(
        retries.len(),
        1,
        "exactly one call should have been retried after the silent destination\n{}",
        kamailio.log_tail(60)
    );
    assert!(
        retries[0].contains(&format!("on sip:{}", a.sip)) && retries[0].contains("after 408"),
        "the retry should go to A after the local timeout (408): {}",
        retries[0]
    );
    let down = format!("callrec instance down: sip:{silent}");
    assert!(
        log.contains(&down),
        "the silent destination should be logged down ({down:?})\n{}",
        kamailio.log_tail(60)
    );
    assert_eq!(assert_dialogs_passed(&kamailio), 4);
    assert_eq!(out.caller.successful_calls(), Some(4));
}

/// When the callee hangs up, the instance sends its BYE to the caller along
/// the route set it learnt from the INVITE's Record-Route, i.e. through
/// Kamailio, whose loose_route() relays it to the caller.
#[test]
fn deploy_kamailio_relays_the_instances_bye_along_the_route_set() {
    let dir = TestDir::new("callee-bye");
    let pbx = SocketAddr::from((PBX_IP, free_port()));
    let trunk = SocketAddr::from((TRUNK_IP, free_port()));
    let a = Instance::start("A", pbx, trunk);
    let kamailio = Kamailio::start(&dir, &[a.sip], 5);

    pair_through(&kamailio, pbx, "callee-bye", 2);
    assert_eq!(
        settle(&[&a], 2)[0],
        (2, 2),
        "both calls answered and sealed"
    );
    let log = kamailio.log();
    let routed_byes = log
        .lines()
        .filter(|l| l.contains("<script>: in-dialog BYE along the route set"))
        .count();
    assert_eq!(
        routed_byes,
        2,
        "each call's BYE from the instance should pass Kamailio by its Record-Route\n{}",
        kamailio.log_tail(60)
    );
}
