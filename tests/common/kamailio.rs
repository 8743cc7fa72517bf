//! Kamailio, the SIP load balancer of `deploy/kamailio/`, for the tests:
//! the shipped `kamailio.cfg` started in the foreground with test defines in
//! front of callrec instances (`Instance`), and the reading of its log (which
//! calls passed, which were retried). Used by the scale-out tests.

use super::*;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The Kamailio binary of the Debian package, or a panic telling how to get it.
pub fn require_kamailio() -> PathBuf {
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

pub fn kamailio_dir() -> PathBuf {
    repo_dir().join("deploy").join("kamailio")
}

pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Sends `sig` (e.g. "TERM") to a process group or process with kill(1).
pub fn send_signal(sig: &str, target: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}").as_str(), "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `grace` for `child` to exit.
pub fn wait_exit(child: &mut Child, grace: Duration) -> bool {
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
pub struct Instance {
    pub name: &'static str,
    pub proxy: Proxy,
    pub sip: SocketAddr,
}

impl Instance {
    pub fn start(name: &'static str, pbx: SocketAddr, trunk: SocketAddr) -> Instance {
        Instance::start_with(name, pbx, trunk, |b| b)
    }

    /// An instance behind Kamailio, with more flags set by `more`.
    pub fn start_with(
        name: &'static str,
        pbx: SocketAddr,
        trunk: SocketAddr,
        more: impl FnOnce(ProxyBuilder) -> ProxyBuilder,
    ) -> Instance {
        let builder = Proxy::builder()
            .pbx(pbx)
            .trunk(trunk, &trunk.to_string())
            .rtp_ports(200)
            // Calls arrive from Kamailio (which shares the instances' address)
            // and name their original sender, as the shipped config does.
            .arg("--dispatcher")
            .arg(&PROXY_IP.to_string());
        let proxy = more(builder).start();
        let sip = proxy.sip_addr();
        Instance { name, proxy, sip }
    }

    pub fn is_running(&mut self) -> bool {
        self.proxy.is_running()
    }

    pub fn log_tail(&self, n: usize) -> String {
        format!("callrec {}: {}", self.name, self.proxy.log_tail(n))
    }

    /// Finished calls that were answered (final INVITE status 2xx).
    pub fn answered(&self) -> Vec<serde_json::Value> {
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
    pub fn sealed_sets(&self) -> usize {
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
    pub fn stop(&mut self) {
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
pub struct Kamailio {
    child: Child,
    pub sip: SocketAddr,
    log_path: PathBuf,
    command: String,
}

/// The `-A` defines that adapt the shipped config to the test.
pub fn test_defines(
    sip: SocketAddr,
    list: &Path,
    run_dir: &Path,
    ping_interval: u32,
) -> Vec<String> {
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
pub fn kamailio_check(cfg: &Path, extra: &[String]) -> (bool, String) {
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
    pub fn start(dir: &TestDir, destinations: &[SocketAddr], ping_interval: u32) -> Kamailio {
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

    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    pub fn log_tail(&self, n: usize) -> String {
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
pub fn calls_through(kamailio: &Kamailio, pbx: SocketAddr, n: u32) -> CallOutcome {
    pair_through(kamailio, pbx, "basic", n)
}

/// `n` calls of scenario pair `name`, as `calls_through`.
pub fn pair_through(kamailio: &Kamailio, pbx: SocketAddr, name: &str, n: u32) -> CallOutcome {
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
pub fn settle(instances: &[&Instance], want: usize) -> Vec<(usize, usize)> {
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
pub fn assert_dialogs_passed(kamailio: &Kamailio) -> usize {
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
pub fn failovers(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("retrying INVITE "))
        .count()
}
