//! Admission of new calls: the router asks here, without waiting on anything,
//! whether a new INVITE may start a call. Two limits apply: the calls in
//! progress (`--max-calls`) and the new INVITEs per second from one source
//! address (`--invite-rate-per-source`, a token bucket per address like
//! Kamailio's pike), from which trusted peers may be exempted; while the
//! proxy shuts down, none.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::Limits;

/// Source addresses whose buckets are remembered; beyond this, buckets that
/// have refilled are forgotten, and if none has, new sources are refused.
/// Keeps a flood of spoofed addresses from growing the table without bound.
const MAX_SOURCES: usize = 65_536;

/// Why a new INVITE is turned away: 503 with this Retry-After (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The proxy is shutting down: the caller should try another instance.
    ShuttingDown,
    /// `--max-calls` calls are in progress.
    TooManyCalls,
    /// The source sent more than `--invite-rate-per-source` INVITEs this second.
    RateLimited,
}

impl Refusal {
    /// Reason phrase of the 503.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::ShuttingDown => "Service Unavailable (shutting down)",
            Refusal::TooManyCalls => "Service Unavailable (too many calls)",
            Refusal::RateLimited => "Service Unavailable (too many new calls from your address)",
        }
    }

    /// Seconds for Retry-After: a full proxy frees up as calls end; a rate
    /// limit is over within a second.
    pub fn retry_after(self) -> u32 {
        match self {
            Refusal::ShuttingDown => 30,
            Refusal::TooManyCalls => 10,
            Refusal::RateLimited => 1,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The router's admission state (owned by the router task, no locks).
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    buckets: HashMap<IpAddr, Bucket>,
    /// When a full table was last swept; a bucket refills within a second,
    /// so sweeping more often would only cost a full scan per INVITE.
    last_sweep: Option<Instant>,
}

impl Admission {
    /// Admission with the configured limits.
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            buckets: HashMap::new(),
            last_sweep: None,
        }
    }

    /// Decides on a new INVITE from `src` while `active` calls are in
    /// progress; `trusted` says whether `src` is a trusted peer.
    pub fn check(
        &mut self,
        src: IpAddr,
        trusted: bool,
        active: usize,
        now: Instant,
    ) -> Result<(), Refusal> {
        let exempt = trusted && self.limits.rate_limit_exempt_trusted;
        if self.limits.invite_rate_per_source > 0 && !exempt && !self.take_token(src, now) {
            return Err(Refusal::RateLimited);
        }
        if self.limits.max_calls > 0 && active >= self.limits.max_calls {
            return Err(Refusal::TooManyCalls);
        }
        Ok(())
    }

    /// One token from `src`'s bucket (N per second, at most N saved up).
    fn take_token(&mut self, src: IpAddr, now: Instant) -> bool {
        let rate = f64::from(self.limits.invite_rate_per_source);
        if !self.buckets.contains_key(&src) && self.buckets.len() >= MAX_SOURCES {
            let swept_lately = self
                .last_sweep
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
            if !swept_lately {
                self.last_sweep = Some(now);
                // A full bucket behaves like no bucket: forget those.
                self.buckets
                    .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < rate);
            }
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let b = self.buckets.entry(src).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Checks a new INVITE against shutdown and the limits, and counts a refusal.
pub fn admit(core: &super::Core, admission: &mut Admission, src: IpAddr) -> Result<(), Refusal> {
    if core.draining.load(Ordering::Relaxed) {
        core.stats.calls_refused.fetch_add(1, Ordering::Relaxed);
        return Err(Refusal::ShuttingDown);
    }
    let active = core.stats.calls_active.load(Ordering::Relaxed) as usize;
    let trusted = core.cfg.trust.is_trusted(src);
    let r = admission.check(src, trusted, active, Instant::now());
    match r {
        Err(Refusal::TooManyCalls) => &core.stats.calls_over_limit,
        Err(Refusal::RateLimited) => &core.stats.invites_rate_limited,
        Err(Refusal::ShuttingDown) | Ok(()) => return r,
    }
    .fetch_add(1, Ordering::Relaxed);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, calls: usize, exempt: bool) -> Limits {
        Limits {
            invite_rate_per_source: rate,
            max_calls: calls,
            rate_limit_exempt_trusted: exempt,
            ..Limits::default()
        }
    }

    #[test]
    fn rate_is_per_source_and_refills() {
        let mut a = Admission::new(limits(2, 0, false));
        let (x, y): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t = Instant::now();
        assert_eq!(a.check(x, false, 0, t), Ok(()));
        assert_eq!(a.check(x, false, 0, t), Ok(()));
        assert_eq!(a.check(x, false, 0, t), Err(Refusal::RateLimited));
        assert_eq!(
            a.check(y, false, 0, t),
            Ok(()),
            "another source has its own bucket"
        );
        let later = t + Duration::from_millis(500);
        assert_eq!(
            a.check(x, false, 0, later),
            Ok(()),
            "one token back after 0.5 s"
        );
        assert_eq!(a.check(x, false, 0, later), Err(Refusal::RateLimited));
    }

    #[test]
    fn trusted_exemption_needs_the_flag() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        let mut strict = Admission::new(limits(1, 0, false));
        assert_eq!(strict.check(ip, true, 0, t), Ok(()));
        assert_eq!(strict.check(ip, true, 0, t), Err(Refusal::RateLimited));
        let mut exempt = Admission::new(limits(1, 0, true));
        for _ in 0..100 {
            assert_eq!(exempt.check(ip, true, 0, t), Ok(()));
        }
        assert_eq!(exempt.check(ip, false, 0, t), Ok(()));
        assert_eq!(exempt.check(ip, false, 0, t), Err(Refusal::RateLimited));
    }

    #[test]
    fn max_calls_applies_to_everyone() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut a = Admission::new(limits(0, 2, true));
        let t = Instant::now();
        assert_eq!(a.check(ip, true, 1, t), Ok(()));
        assert_eq!(a.check(ip, true, 2, t), Err(Refusal::TooManyCalls));
        let mut unlimited = Admission::new(limits(0, 0, false));
        assert_eq!(unlimited.check(ip, false, 1_000_000, t), Ok(()));
    }

    #[test]
    fn the_source_table_is_bounded() {
        let mut a = Admission::new(limits(1, 0, false));
        let t = Instant::now();
        for i in 0..MAX_SOURCES as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(a.check(ip, false, 0, t), Ok(()));
        }
        let newcomer: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(a.check(newcomer, false, 0, t), Err(Refusal::RateLimited));
        assert_eq!(a.buckets.len(), MAX_SOURCES);
        // A second later every bucket has refilled and is forgotten.
        let later = t + Duration::from_secs(1);
        assert_eq!(a.check(newcomer, false, 0, later), Ok(()));
        assert_eq!(a.buckets.len(), 1);
    }
}
