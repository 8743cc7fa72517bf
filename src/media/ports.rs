//! The RTP port pool: even ports from `--rtp-ports`, each handed out with its
//! RTCP neighbour (port + 1) as a bound socket pair, and returned when the pair
//! is dropped. Ports are handed out in random order, so that nobody can tell
//! from one call's port which port the next call gets; the pick is among the
//! longest-free half of the queue and freed ports go to its back, so a late
//! packet of an ended call does not land in a new one.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::seq::SliceRandom;
use rand::Rng;

/// A pool of even RTP ports.
#[derive(Debug)]
pub struct PortPool {
    ip: IpAddr,
    free: Mutex<VecDeque<u16>>,
    in_use: AtomicUsize,
}

/// An RTP socket and its RTCP socket, bound on consecutive ports; the port
/// goes back to the pool when the pair is dropped.
#[derive(Debug)]
pub struct PortPair {
    /// RTP and RTCP sockets until the relay takes them (see `take_sockets`).
    sockets: Option<(std::net::UdpSocket, std::net::UdpSocket)>,
    /// The RTP port number.
    pub port: u16,
    pool: Arc<PortPool>,
}

impl PortPool {
    /// A pool over `lo..=hi` (odd bounds are rounded inwards) on `ip`.
    pub fn new(ip: IpAddr, lo: u16, hi: u16) -> Arc<PortPool> {
        let first = lo + (lo % 2);
        let mut free: Vec<u16> = (first..hi).step_by(2).collect();
        free.shuffle(&mut rand::thread_rng());
        let free = free.into();
        Arc::new(PortPool {
            ip,
            free: Mutex::new(free),
            in_use: AtomicUsize::new(0),
        })
    }

    /// How many pairs are handed out right now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// How many pairs are free.
    pub fn available(&self) -> usize {
        self.free.lock().expect("port pool poisoned").len()
    }

    /// Binds the next free pair; ports taken by other programs are skipped.
    pub fn allocate(self: &Arc<Self>) -> io::Result<PortPair> {
        let attempts = self.available();
        for _ in 0..attempts {
            let Some(port) = self.take_random() else {
                break;
            };
            match bind_pair(self.ip, port) {
                Ok(sockets) => {
                    self.in_use.fetch_add(1, Ordering::Relaxed);
                    return Ok(PortPair {
                        sockets: Some(sockets),
                        port,
                        pool: self.clone(),
                    });
                }
                Err(_) => self
                    .free
                    .lock()
                    .expect("port pool poisoned")
                    .push_back(port),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "no free RTP port pair on {} (widen --rtp-ports or check for other programs using them)",
                self.ip
            ),
        ))
    }
}

impl PortPool {
    /// Removes a random port from the older half of the free queue.
    fn take_random(&self) -> Option<u16> {
        let mut free = self.free.lock().expect("port pool poisoned");
        let older_half = free.len().div_ceil(2);
        if older_half == 0 {
            return None;
        }
        let i = rand::thread_rng().gen_range(0..older_half);
        free.remove(i)
    }
}

fn bind_pair(ip: IpAddr, port: u16) -> io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    let rtp = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
    let rtcp = std::net::UdpSocket::bind(SocketAddr::new(ip, port + 1))?;
    rtp.set_nonblocking(true)?;
    rtcp.set_nonblocking(true)?;
    Ok((rtp, rtcp))
}

impl Drop for PortPair {
    fn drop(&mut self) {
        self.in_use_release();
    }
}

impl PortPair {
    /// Hands over the RTP and RTCP sockets (to the relay that serves them);
    /// the pair keeps the port reserved.
    pub fn take_sockets(&mut self) -> io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
        self.sockets
            .take()
            .ok_or_else(|| io::Error::other("the port pair's sockets were already taken"))
    }

    fn in_use_release(&self) {
        self.pool.in_use.fetch_sub(1, Ordering::Relaxed);
        self.pool
            .free
            .lock()
            .expect("port pool poisoned")
            .push_back(self.port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pairs_are_returned() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 31000, 31009);
        assert_eq!(pool.available(), 5);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert_eq!(a.port % 2, 0);
        assert_ne!(a.port, b.port);
        assert_eq!(pool.in_use(), 2);
        drop(a);
        drop(b);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(pool.available(), 5);
    }

    #[tokio::test]
    async fn ports_are_handed_out_in_random_order() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 34000, 34999);
        let pairs: Vec<PortPair> = (0..8).map(|_| pool.allocate().unwrap()).collect();
        let ports: Vec<u16> = pairs.iter().map(|p| p.port).collect();
        assert!(
            ports.windows(2).any(|w| w[1] != w[0] + 2),
            "ports handed out in order: {ports:?}"
        );
    }

    #[tokio::test]
    async fn a_freed_port_is_not_handed_out_again_at_once() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 35100, 35119);
        let freed = pool.allocate().unwrap();
        let port = freed.port;
        drop(freed);
        let next: Vec<PortPair> = (0..4).map(|_| pool.allocate().unwrap()).collect();
        assert!(next.iter().all(|p| p.port != port), "{port} reused at once");
    }
}
