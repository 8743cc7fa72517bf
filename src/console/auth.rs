//! Console sessions, login throttling and CSRF tokens, all in memory: a
//! restart logs everyone out, which is the safe direction. Sessions expire
//! after an idle time; the user and her role are re-read from the database on
//! every request, so a removed user or a changed password ends her sessions.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "callrec_session";
/// Name of the cookie that carries the login form's CSRF token.
pub const LOGIN_COOKIE: &str = "callrec_login";

/// Failed logins per user name allowed within [`FAIL_WINDOW`].
pub const MAX_FAILS: usize = 5;
/// Failed logins per address allowed within [`FAIL_WINDOW`]: higher than per
/// user, since colleagues behind one NAT or reverse proxy share an address.
pub const MAX_FAILS_PER_ADDR: usize = 20;
/// How long a failed login counts against the user and the address.
pub const FAIL_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Most user names with recent failures the throttle tracks (about 15 MB).
/// A name is never forgotten before its window has passed, whether an
/// account has it or not (forgetting only invented names would tell which
/// names exist); when a flood of invented names has filled the table, a
/// name not in it is refused like a throttled one until room comes back.
const MAX_NAMES: usize = 100_000;
/// Most addresses the throttle tracks; beyond this the address that failed
/// least recently is forgotten (the per-name count still holds).
const MAX_ADDRS: usize = 10_000;
/// Most sessions at once; the least recently used goes first.
const MAX_SESSIONS: usize = 10_000;
/// A session ends this long after its login however busy it is: a stolen
/// cookie, kept alive by requests, serves its thief one working day at most.
pub const MAX_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// 32 random bytes, hex: session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Compares secrets in constant time (hashing first hides their lengths).
pub fn same_secret(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    !b.is_empty()
        && bool::from(
            Sha256::digest(a)
                .as_slice()
                .ct_eq(Sha256::digest(b).as_slice()),
        )
}

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user's login name.
    pub user: String,
    /// The password hash at login: a new password ends the session.
    pub hash: String,
    /// The token every state-changing form must carry.
    pub csrf: String,
    last_seen: Instant,
    started: Instant,
}

/// All sessions and the failed-login record.
pub struct Auth {
    idle: Duration,
    sessions: Mutex<HashMap<String, Session>>,
    /// Recent failures per user name, and per address.
    names: Mutex<HashMap<String, VecDeque<Instant>>>,
    addrs: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Auth {
    /// Sessions end after `idle` without a request.
    pub fn new(idle: Duration) -> Auth {
        Auth {
            idle,
            sessions: Mutex::default(),
            names: Mutex::default(),
            addrs: Mutex::default(),
        }
    }

    /// Starts a session; returns its id (the cookie's value).
    pub fn start(&self, user: &str, hash: &str) -> String {
        let id = random_token();
        let mut s = self.sessions.lock().expect("sessions poisoned");
        let now = Instant::now();
        s.retain(|_, v| self.live(v, now));
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s
                .iter()
                .min_by_key(|(_, v)| v.last_seen)
                .map(|(k, _)| k.clone())
            {
                s.remove(&oldest);
            }
        }
        s.insert(
            id.clone(),
            Session {
                user: user.to_string(),
                hash: hash.to_string(),
                csrf: random_token(),
                last_seen: now,
                started: now,
            },
        );
        id
    }

    /// The live session with id `id`, touched; an idle one is ended.
    pub fn get(&self, id: &str) -> Option<Session> {
        self.get_at(id, Instant::now())
    }

    fn get_at(&self, id: &str, now: Instant) -> Option<Session> {
        let mut s = self.sessions.lock().expect("sessions poisoned");
        let live = s.get(id).is_some_and(|v| self.live(v, now));
        if !live {
            s.remove(id);
            return None;
        }
        let v = s.get_mut(id)?;
        v.last_seen = now;
        Some(v.clone())
    }

    /// Whether `v` is neither idle too long nor older than its lifetime.
    fn live(&self, v: &Session, now: Instant) -> bool {
        now.saturating_duration_since(v.last_seen) < self.idle
            && now.saturating_duration_since(v.started) < MAX_LIFETIME
    }

    /// Ends a session.
    pub fn end(&self, id: &str) {
        self.sessions.lock().expect("sessions poisoned").remove(id);
    }

    /// When a login for `user` from `addr` is refused for too many failures,
    /// how long until it is allowed again.
    pub fn throttled(&self, user: &str, addr: IpAddr) -> Option<Duration> {
        self.throttled_at(user, addr, Instant::now())
    }

    fn throttled_at(&self, user: &str, addr: IpAddr, now: Instant) -> Option<Duration> {
        let by_name = {
            let mut names = self.names.lock().expect("names poisoned");
            let k = user_key(user);
            if let Some(q) = names.get_mut(&k) {
                waiting(q, MAX_FAILS, now)
            } else if names.len() >= MAX_NAMES {
                // A full table refuses a name it cannot count.
                prune(&mut names, now);
                (names.len() >= MAX_NAMES).then_some(FAIL_WINDOW)
            } else {
                None
            }
        };
        let by_addr = {
            let mut addrs = self.addrs.lock().expect("addrs poisoned");
            addrs
                .get_mut(&addr_key(addr))
                .and_then(|q| waiting(q, MAX_FAILS_PER_ADDR, now))
        };
        by_name.max(by_addr)
    }

    /// Counts a failed login against the user name and the address.
    pub fn failed(&self, user: &str, addr: IpAddr) {
        self.failed_at(user, addr, Instant::now())
    }

    fn failed_at(&self, user: &str, addr: IpAddr, now: Instant) {
        {
            let mut names = self.names.lock().expect("names poisoned");
            let k = user_key(user);
            if names.len() >= MAX_NAMES && !names.contains_key(&k) {
                prune(&mut names, now);
            }
            // Still full: the name is refused anyway (see `throttled_at`).
            if names.len() < MAX_NAMES || names.contains_key(&k) {
                count(names.entry(k).or_default(), MAX_FAILS, now);
            }
        }
        let mut addrs = self.addrs.lock().expect("addrs poisoned");
        let k = addr_key(addr);
        if addrs.len() >= MAX_ADDRS && !addrs.contains_key(&k) {
            prune(&mut addrs, now);
            if addrs.len() >= MAX_ADDRS {
                let oldest = addrs
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied())
                    .map(|(k, _)| k.clone());
                if let Some(o) = oldest {
                    addrs.remove(&o);
                }
            }
        }
        count(addrs.entry(k).or_default(), MAX_FAILS_PER_ADDR, now);
    }

    /// A successful login clears the user's record (not the address's).
    pub fn succeeded(&self, user: &str) {
        self.names
            .lock()
            .expect("names poisoned")
            .remove(&user_key(user));
    }
}

fn user_key(user: &str) -> String {
    format!("user:{}", user.to_lowercase())
}

/// An address counts by its client block (an IPv6 address by its /64).
fn addr_key(addr: IpAddr) -> String {
    format!("addr:{}", crate::http_serve::client_block(addr))
}

/// How long until a key with failures `q` (at most `max` counted) may try
/// again; its expired failures are dropped first.
fn waiting(q: &mut VecDeque<Instant>, max: usize, now: Instant) -> Option<Duration> {
    while q
        .front()
        .is_some_and(|t| now.duration_since(*t) >= FAIL_WINDOW)
    {
        q.pop_front();
    }
    (q.len() >= max).then(|| FAIL_WINDOW - now.duration_since(q[0]))
}

/// Counts one failure at `now`, keeping the last `max`.
fn count(q: &mut VecDeque<Instant>, max: usize, now: Instant) {
    q.push_back(now);
    if q.len() > max {
        q.pop_front();
    }
}

/// Drops the keys whose last failure is out of the window.
fn prune(t: &mut HashMap<String, VecDeque<Instant>>, now: Instant) {
    t.retain(|_, q| {
        q.back()
            .is_some_and(|l| now.duration_since(*l) < FAIL_WINDOW)
    });
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Path=/, Secure when asked.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> String {
    let mut c = format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/");
    if let Some(a) = max_age {
        c.push_str(&format!("; Max-Age={a}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_kept_busy_still_ends_after_its_lifetime() {
        let a = Auth::new(Duration::from_secs(60));
        let id = a.start("ann", "h");
        let t0 = Instant::now();
        let mut t = t0;
        // A request every 50 s, never idle: the session still ends.
        while t < t0 + MAX_LIFETIME - Duration::from_secs(50) {
            t += Duration::from_secs(50);
            assert!(a.get_at(&id, t).is_some(), "ended early, at {:?}", t - t0);
        }
        assert!(a.get_at(&id, t0 + MAX_LIFETIME).is_none());
    }

    #[test]
    fn idle_sessions_end() {
        let a = Auth::new(Duration::from_secs(60));
        let id = a.start("ann", "h");
        let t0 = Instant::now();
        assert!(a.get_at(&id, t0 + Duration::from_secs(59)).is_some());
        // Touched at 59 s: still alive at 118 s, gone after a minute of silence.
        assert!(a.get_at(&id, t0 + Duration::from_secs(118)).is_some());
        assert!(a.get_at(&id, t0 + Duration::from_secs(179)).is_none());
        assert!(a.get_at(&id, t0).is_none(), "an expired session stays gone");
        assert!(a.get("not a session").is_none());
    }

    #[test]
    fn failures_throttle_per_user_and_per_address() {
        let a = Auth::new(Duration::from_secs(60));
        let (x, y): (IpAddr, IpAddr) = ("127.0.0.5".parse().unwrap(), "127.0.0.6".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..MAX_FAILS {
            assert!(a.throttled_at("ann", x, t0).is_none(), "after {i}");
            // Each guess from another address: the user's count still grows.
            a.failed_at("Ann", if i % 2 == 0 { x } else { y }, t0);
        }
        assert!(a
            .throttled_at("ann", "127.0.0.9".parse().unwrap(), t0)
            .is_some());
        // Address x guessed 3 times; other names from x are still allowed.
        assert!(a.throttled_at("bob", x, t0).is_none());
        for _ in 0..MAX_FAILS_PER_ADDR {
            a.failed_at(&random_token(), x, t0);
        }
        assert!(
            a.throttled_at("bob", x, t0).is_some(),
            "address spraying names"
        );
        assert!(a.throttled_at("bob", y, t0).is_none());
        assert!(
            a.throttled_at("ann", y, t0 + FAIL_WINDOW).is_none(),
            "the window passes"
        );
    }

    #[test]
    fn a_flood_of_invented_names_buys_no_guesses_and_tells_no_names() {
        let a = Auth::new(Duration::from_secs(60));
        let t0 = Instant::now();
        // Five guesses at one name before the flood, whoever has it.
        let early: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..MAX_FAILS {
            a.failed_at("adam", early, t0);
        }
        // Invented names from many addresses fill the table.
        for i in 0..MAX_NAMES {
            let n = i % 5000;
            let addr = IpAddr::from([10, 0, (n >> 8) as u8, n as u8]);
            a.failed_at(&format!("nobody{i}"), addr, t0);
        }
        let fresh: IpAddr = "192.0.2.2".parse().unwrap();
        // The name guessed at before is still throttled: the flood did not
        // buy fresh guesses, and did not tell whether an account has it.
        assert!(a.throttled_at("adam", fresh, t0).is_some());
        // A name the full table cannot count is refused, whoever has it.
        assert!(a.throttled_at("eve", fresh, t0).is_some());
        assert!(a.names.lock().unwrap().len() <= MAX_NAMES);
        assert!(a.addrs.lock().unwrap().len() <= MAX_ADDRS);
        // Once the window has passed, there is room again.
        let later = t0 + FAIL_WINDOW;
        assert!(a.throttled_at("eve", fresh, later).is_none());
    }

    #[test]
    fn a_full_address_table_forgets_the_address_failed_least_recently() {
        let a = Auth::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..MAX_ADDRS {
            let addr = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
            a.failed_at("someone", addr, t0);
        }
        let t1 = t0 + Duration::from_secs(1);
        let new: IpAddr = "192.0.2.9".parse().unwrap();
        for i in 0..MAX_FAILS_PER_ADDR {
            a.failed_at(&format!("n{i}"), new, t1);
        }
        assert!(a.throttled_at("bob", new, t1).is_some());
        assert!(a.addrs.lock().unwrap().len() <= MAX_ADDRS);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let a = Auth::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..MAX_FAILS_PER_ADDR {
            let addr: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            a.failed_at(&random_token(), addr, t0);
        }
        let same_block: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(a.throttled_at("bob", same_block, t0).is_some());
        let other_block: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(a.throttled_at("bob", other_block, t0).is_none());
    }

    #[test]
    fn cookies() {
        assert_eq!(
            cookie("a=1; callrec_session=xyz; b=2", SESSION_COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie("xcallrec_session=1", SESSION_COOKIE), None);
        let c = set_cookie(SESSION_COOKIE, "v", true, None);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(same_secret("abc", "abc") && !same_secret("abd", "abc") && !same_secret("", ""));
    }
}
