//! The RTP port pool: even ports from `--rtp-ports`, each handed out with its
//! RTCP neighbour (port + 1) as a bound socket pair, and returned when the pair
//! is dropped. Recently freed ports go to the back of the queue, so a late
//! packet of an ended call does not land in a new one.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
        let free = (first..hi).step_by(2).collect();
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
            let Some(port) = self.free.lock().expect("port pool poisoned").pop_front() else {
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
    /// Hands the RTP and RTCP sockets to the tokio runtime this runs on (the
    /// media thread that relays them); the pair keeps the port reserved.
    pub fn take_sockets(&mut self) -> io::Result<(tokio::net::UdpSocket, tokio::net::UdpSocket)> {
        let (rtp, rtcp) = self
            .sockets
            .take()
            .ok_or_else(|| io::Error::other("the port pair's sockets were already taken"))?;
        Ok((
            tokio::net::UdpSocket::from_std(rtp)?,
            tokio::net::UdpSocket::from_std(rtcp)?,
        ))
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
}
