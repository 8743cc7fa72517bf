//! The caller/callee scenario pairs of `sip-scenarios/` (`PAIRS`) and one run
//! of a pair (`CallRun`), directly or through the proxy, with RTP watched on
//! both m= ports (`CallOutcome`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use super::*;

/// Which way a call goes through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Trunk (127.0.0.3) calls the PBX (127.0.0.2).
    Incoming,
    /// PBX (127.0.0.2) calls the trunk (127.0.0.3).
    Outgoing,
}

impl Direction {
    pub fn caller_ip(self) -> Ipv4Addr {
        match self {
            Direction::Incoming => TRUNK_IP,
            Direction::Outgoing => PBX_IP,
        }
    }

    pub fn callee_ip(self) -> Ipv4Addr {
        match self {
            Direction::Incoming => PBX_IP,
            Direction::Outgoing => TRUNK_IP,
        }
    }

    /// Default (caller number, dialled number) for the direction.
    pub fn numbers(self) -> (&'static str, &'static str) {
        match self {
            Direction::Incoming => ("03012345678", "200"),
            Direction::Outgoing => ("201", "004989123456"),
        }
    }
}

/// A caller/callee scenario pair in `sip-scenarios/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub name: &'static str,
    /// Folder under sip-scenarios/ holding caller.xml and callee.xml.
    pub dir: &'static str,
    /// Whether both sides send RTP once the call is up.
    pub media: bool,
    pub direction: Direction,
}

/// Every pair: name, folder, RTP both ways?, default direction.
pub const PAIRS: &[Pair] = &[
    Pair {
        name: "basic",
        dir: "basic",
        media: true,
        direction: Direction::Incoming,
    },
    Pair {
        name: "callee-bye",
        dir: "callee-bye",
        media: true,
        direction: Direction::Incoming,
    },
    Pair {
        name: "cancel",
        dir: "cancel",
        media: false,
        direction: Direction::Incoming,
    },
    Pair {
        name: "busy",
        dir: "busy",
        media: false,
        direction: Direction::Incoming,
    },
    Pair {
        name: "early-media",
        dir: "early-media",
        media: true,
        direction: Direction::Incoming,
    },
    Pair {
        name: "hold",
        dir: "hold",
        media: true,
        direction: Direction::Incoming,
    },
    Pair {
        name: "callee-hold",
        dir: "callee-hold",
        media: true,
        direction: Direction::Incoming,
    },
    Pair {
        name: "late-offer",
        dir: "late-offer",
        media: true,
        direction: Direction::Incoming,
    },
    // The basic pair with the sides swapped: the PBX calls the trunk.
    Pair {
        name: "outgoing",
        dir: "basic",
        media: true,
        direction: Direction::Outgoing,
    },
    // The basic pair with 1 s of media, for -r 20 -m 200.
    Pair {
        name: "load",
        dir: "load",
        media: true,
        direction: Direction::Incoming,
    },
    // In-dialog INFO, MESSAGE, NOTIFY from the caller; INFO and UPDATE (hold)
    // from the callee. Signalling only.
    Pair {
        name: "dialog",
        dir: "dialog",
        media: false,
        direction: Direction::Incoming,
    },
    // REFER from the callee, 202, NOTIFY (sipfrag) back, the callee hangs up.
    Pair {
        name: "refer",
        dir: "refer",
        media: false,
        direction: Direction::Incoming,
    },
    // 100rel: reliable 183, PRACK whose RAck must name the callee leg's CSeq.
    Pair {
        name: "prack",
        dir: "prack",
        media: false,
        direction: Direction::Incoming,
    },
    // Compact header forms and two Via values in one line from the caller.
    Pair {
        name: "compact",
        dir: "compact",
        media: false,
        direction: Direction::Incoming,
    },
    // Reliable 183 + PRACK, then an UPDATE (hold) from the callee in the early dialog.
    Pair {
        name: "early-update",
        dir: "early-update",
        media: false,
        direction: Direction::Incoming,
    },
];

/// The pair called `name` (panics on an unknown name).
pub fn pair(name: &str) -> Pair {
    *PAIRS.iter().find(|p| p.name == name).unwrap_or_else(|| {
        panic!(
            "no scenario pair {name:?}; known: {:?}",
            PAIRS.iter().map(|p| p.name).collect::<Vec<_>>()
        )
    })
}

/// One run of a pair: callee first (waits until its socket is bound), then
/// the caller, both watched for RTP arrival on their m= ports.
///
/// `CallRun::direct(pair)` connects caller and callee without a proxy;
/// `Proxy::call(pair)` builds one that goes through the proxy.
#[derive(Debug, Clone)]
pub struct CallRun {
    pub pair: Pair,
    pub direction: Direction,
    /// Caller's own SIP address.
    pub caller_sip: SocketAddr,
    /// Callee's SIP address.
    pub callee_sip: SocketAddr,
    /// Where the caller sends its INVITEs (the proxy, or the callee directly).
    pub send_to: SocketAddr,
    pub caller_media_port: u16,
    pub callee_media_port: u16,
    pub calls: u32,
    pub rate: Option<f64>,
    pub limit: Option<u32>,
    pub timeout: Duration,
    /// sipp `-t` of the caller and of the callee: `u1` (UDP) or `t1` (TCP).
    pub caller_transport: String,
    pub callee_transport: String,
    pub caller_number: String,
    pub dialled: String,
}

impl CallRun {
    /// A run of `pair` in its own direction with every port freshly picked;
    /// `send_to` is the callee itself until changed with `via`.
    pub fn direct(pair: Pair) -> CallRun {
        let d = pair.direction;
        let callee_sip = SocketAddr::from((d.callee_ip(), free_port()));
        let (caller_number, dialled) = d.numbers();
        let load = pair.name == "load";
        CallRun {
            pair,
            direction: d,
            caller_sip: SocketAddr::from((d.caller_ip(), free_port())),
            callee_sip,
            send_to: callee_sip,
            caller_media_port: super::media_ports(),
            callee_media_port: super::media_ports(),
            calls: if load { 200 } else { 1 },
            rate: if load { Some(20.0) } else { None },
            limit: None,
            timeout: Duration::from_secs(if load { 90 } else { 30 }),
            caller_transport: "u1".into(),
            callee_transport: "u1".into(),
            caller_number: caller_number.into(),
            dialled: dialled.into(),
        }
    }

    /// Send the caller's requests to `addr` (the proxy).
    pub fn via(mut self, addr: SocketAddr) -> CallRun {
        self.send_to = addr;
        self
    }

    pub fn caller_at(mut self, addr: SocketAddr) -> CallRun {
        self.caller_sip = addr;
        self
    }

    pub fn callee_at(mut self, addr: SocketAddr) -> CallRun {
        self.callee_sip = addr;
        self
    }

    pub fn calls(mut self, m: u32) -> CallRun {
        self.calls = m;
        self
    }

    pub fn rate(mut self, r: f64) -> CallRun {
        self.rate = Some(r);
        self
    }

    pub fn limit(mut self, l: u32) -> CallRun {
        self.limit = Some(l);
        self
    }

    pub fn timeout(mut self, t: Duration) -> CallRun {
        self.timeout = t;
        self
    }

    /// `u1` (UDP) or `t1` (TCP), for both sides.
    pub fn transport(mut self, t: &str) -> CallRun {
        self.caller_transport = t.into();
        self.callee_transport = t.into();
        self
    }

    /// `u1` or `t1` for the caller only (e.g. TCP from the trunk, UDP to the PBX).
    pub fn caller_transport(mut self, t: &str) -> CallRun {
        self.caller_transport = t.into();
        self
    }

    pub fn numbers(mut self, caller: &str, dialled: &str) -> CallRun {
        self.caller_number = caller.into();
        self.dialled = dialled.into();
        self
    }

    pub fn caller_media(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.direction.caller_ip(), self.caller_media_port)
    }

    pub fn callee_media(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.direction.callee_ip(), self.callee_media_port)
    }

    /// The callee's sipp, as `run` starts it.
    pub fn callee_sipp(&self, dir: &Path) -> Sipp {
        Sipp::new(
            &format!("{}-callee", self.pair.name),
            format!("{}/callee.xml", self.pair.dir),
        )
        .local(self.callee_sip)
        .media(
            IpAddr::V4(self.direction.callee_ip()),
            self.callee_media_port,
        )
        .calls(self.calls)
        .timeout(self.timeout)
        .transport(&self.callee_transport)
        .trace_messages(self.calls <= 20)
        .trace_dir(dir)
    }

    /// The caller's sipp, as `run` starts it.
    pub fn caller_sipp(&self, dir: &Path) -> Sipp {
        let mut s = Sipp::new(
            &format!("{}-caller", self.pair.name),
            format!("{}/caller.xml", self.pair.dir),
        )
        .remote(self.send_to)
        .local(self.caller_sip)
        .media(
            IpAddr::V4(self.direction.caller_ip()),
            self.caller_media_port,
        )
        .calls(self.calls)
        .timeout(self.timeout)
        .transport(&self.caller_transport)
        .key("caller", &self.caller_number)
        .service(&self.dialled)
        .trace_messages(self.calls <= 20)
        .trace_dir(dir);
        if let Some(r) = self.rate {
            s = s.rate(r);
        }
        if let Some(l) = self.limit {
            s = s.limit(l);
        }
        s
    }

    /// Runs the pair to the end. Files go to a `TestDir` kept on failure.
    pub fn run(self) -> CallOutcome {
        let dir = TestDir::new(&format!("pair-{}", self.pair.name));
        let mut callee = self.callee_sipp(dir.path()).spawn();
        let ready = callee.wait_ready(Duration::from_secs(10));
        let watch = RtpWatch::start(&[self.caller_media(), self.callee_media()]);
        if !ready {
            let callee = callee.wait_at_most(Duration::from_secs(1));
            panic!(
                "callee sipp never bound {}\n{}",
                self.callee_sip,
                callee.report()
            );
        }
        let caller = self.caller_sipp(dir.path()).spawn().wait();
        let callee = if caller.success() {
            callee.wait()
        } else {
            callee.wait_at_most(Duration::from_secs(5))
        };
        let seen = watch.finish();
        CallOutcome {
            run: self,
            caller,
            callee,
            caller_media: seen[0],
            callee_media: seen[1],
            dir,
        }
    }
}

/// Both sides of a finished `CallRun`.
pub struct CallOutcome {
    pub run: CallRun,
    pub caller: SippOutcome,
    pub callee: SippOutcome,
    /// RTP that reached the caller's m= port (sent by the callee, or relayed).
    pub caller_media: MediaSeen,
    /// RTP that reached the callee's m= port.
    pub callee_media: MediaSeen,
    pub dir: TestDir,
}

impl CallOutcome {
    pub fn report(&self) -> String {
        format!(
            "pair {} ({:?}), {} call(s): caller {} -> {} , callee at {}\n\
             RTP at caller m= port {}: {:?}\nRTP at callee m= port {}: {:?}\n{}\n{}",
            self.run.pair.name,
            self.run.direction,
            self.run.calls,
            self.run.caller_sip,
            self.run.send_to,
            self.run.callee_sip,
            self.run.caller_media(),
            self.caller_media,
            self.run.callee_media(),
            self.callee_media,
            self.caller.report(),
            self.callee.report()
        )
    }

    /// Both sipp exit codes are 0 and both count every call as successful.
    pub fn assert_success(&self) {
        let n = u64::from(self.run.calls);
        let ok = self.caller.success()
            && self.callee.success()
            && self.caller.successful_calls() == Some(n)
            && self.callee.successful_calls() == Some(n)
            && self.caller.failed_calls() == Some(0)
            && self.callee.failed_calls() == Some(0);
        assert!(
            ok,
            "pair {} did not succeed: caller exit {:?} ({} ok / {:?} failed), callee exit {:?} ({} ok / {:?} failed), expected {n} calls\n{}",
            self.run.pair.name,
            self.caller.code,
            self.caller.successful_calls().map_or("?".into(), |v| v.to_string()),
            self.caller.failed_calls(),
            self.callee.code,
            self.callee.successful_calls().map_or("?".into(), |v| v.to_string()),
            self.callee.failed_calls(),
            self.report()
        );
    }

    /// RTP reached the m= ports of both sides.
    pub fn assert_media_both_ways(&self) {
        assert!(
            self.caller_media.received() && self.callee_media.received(),
            "pair {}: RTP did not arrive both ways (caller port got {:?}, callee port got {:?})\n{}",
            self.run.pair.name,
            self.caller_media,
            self.callee_media,
            self.report()
        );
    }
}
