//! Where a kernel-relayed packet goes once rewritten: delivered on this
//! host, or sent out of an interface to a neighbour on its link. Only these
//! two are handed to the kernel; a target behind a router (the route, policy
//! routing, NAT on the way out) stays with the userspace relay, whose packets
//! take the kernel's full output path. Answers are kept for a while, since
//! each call asks twice and reading the interfaces is a netlink dump.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer is reused: addresses rarely change, and a changed
/// one only moves new flows between the kernel and userspace.
const KEEP: Duration = Duration::from_secs(10);

/// An answer of `out_ifindex` and when it was looked up.
type Answer = (Instant, Option<u32>);

/// Answers of `out_ifindex` by (target, local address).
#[derive(Default)]
pub(super) struct Cache(Mutex<HashMap<(Ipv4Addr, Ipv4Addr), Answer>>);

impl Cache {
    /// 0 when `target` is one of this host's addresses (the program then
    /// delivers it, on `lo` only); the interface index when `target` is on
    /// the link of the interface that holds `local` (the relay socket's
    /// address); None otherwise.
    pub(super) fn out_ifindex(&self, target: Ipv4Addr, local: Ipv4Addr) -> Option<u32> {
        let now = Instant::now();
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, answer)) = cache.get(&(target, local)) {
            if now.duration_since(*at) < KEEP {
                return *answer;
            }
        }
        let answer = lookup(target, local);
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert((target, local), (now, answer));
        answer
    }
}

fn lookup(target: Ipv4Addr, local: Ipv4Addr) -> Option<u32> {
    if target.is_loopback() {
        return Some(0);
    }
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let (mut target_is_ours, mut on_link) = (false, None);
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let (Some(ip), Some(mask)) = (v4(ifa.ifa_addr), v4(ifa.ifa_netmask)) else {
            continue;
        };
        if ip == target {
            target_is_ours = true;
        }
        let m = u32::from(mask);
        if ip == local && u32::from(target) & m == u32::from(local) & m {
            // SAFETY: ifa_name is a NUL-terminated interface name.
            let index = unsafe { libc::if_nametoindex(ifa.ifa_name) };
            if index != 0 {
                on_link = Some(index);
            }
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    if target_is_ours {
        Some(0)
    } else {
        on_link
    }
}

/// The IPv4 address in a sockaddr from getifaddrs, if it is one.
fn v4(addr: *const libc::sockaddr) -> Option<Ipv4Addr> {
    // SAFETY: a non-null address from getifaddrs points to a sockaddr of the
    // family it names; the family says it is a sockaddr_in.
    unsafe {
        if addr.is_null() || i32::from((*addr).sa_family) != libc::AF_INET {
            return None;
        }
        let sin = &*addr.cast::<libc::sockaddr_in>();
        Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
    }
}
