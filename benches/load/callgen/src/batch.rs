//! Batched socket calls for the RTP engine: the buffers of one `sendmmsg`
//! batch and of `recvmmsg`, allocated once and reused for every batch, so a
//! tick's packets cost one system call per lane and no allocation per packet.

use crate::media::PKT_MAX;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

pub const RECV_BATCH: usize = 64;
const RECV_BUF: usize = 512;

/// Reused buffers for one `sendmmsg` batch: packet buffers stay allocated
/// from batch to batch, each packet is written once into its own.
#[derive(Default)]
pub struct SendScratch {
    pkts: Vec<[u8; PKT_MAX]>,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_in>,
    /// The stream each packet of the batch belongs to.
    pub owners: Vec<usize>,
}

impl SendScratch {
    pub fn clear(&mut self) {
        self.lens.clear();
        self.addrs.clear();
        self.owners.clear();
    }

    /// The buffer of the next packet (filled, then `commit`ted or left).
    pub fn next(&mut self) -> &mut [u8; PKT_MAX] {
        let n = self.lens.len();
        if self.pkts.len() == n {
            self.pkts.push([0u8; PKT_MAX]);
        }
        &mut self.pkts[n]
    }

    pub fn commit(&mut self, len: usize, to: libc::sockaddr_in, owner: usize) {
        self.lens.push(len);
        self.addrs.push(to);
        self.owners.push(owner);
    }

    /// Sends the batch; returns the indexes of packets the kernel refused
    /// (full buffer, or an ICMP error left by a port that has closed).
    pub fn send(&mut self, fd: RawFd) -> Vec<usize> {
        let n = self.lens.len();
        let mut iov: Vec<libc::iovec> = self
            .pkts
            .iter_mut()
            .zip(&self.lens)
            .map(|(p, &len)| libc::iovec {
                iov_base: p.as_mut_ptr() as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: mmsghdr is plain data; the pointers set below stay valid for the call.
        let mut hdrs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (k, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_name = &mut self.addrs[k] as *mut _ as *mut libc::c_void;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut iov[k];
            h.msg_hdr.msg_iovlen = 1;
        }
        let mut failed = Vec::new();
        let mut at = 0;
        while at < n {
            // SAFETY: hdrs[at..] are valid mmsghdr entries pointing into live buffers.
            let r =
                unsafe { libc::sendmmsg(fd, hdrs[at..].as_mut_ptr(), (n - at) as libc::c_uint, 0) };
            if r <= 0 {
                // The first message failed: count it and go on with the rest.
                failed.push(at);
                at += 1;
            } else {
                at += r as usize;
            }
        }
        failed
    }
}

/// Reused buffers for `recvmmsg`.
pub struct RecvScratch {
    bufs: Vec<[u8; RECV_BUF]>,
    addrs: Vec<libc::sockaddr_in>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvScratch {
    pub fn new() -> RecvScratch {
        // SAFETY (both zeroed() calls): plain data, zero is valid; pointers are set before each call.
        RecvScratch {
            bufs: vec![[0u8; RECV_BUF]; RECV_BATCH],
            addrs: (0..RECV_BATCH)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            iov: (0..RECV_BATCH)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            hdrs: (0..RECV_BATCH)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
        }
    }

    pub fn recv(&mut self, fd: RawFd) -> usize {
        for k in 0..RECV_BATCH {
            self.iov[k] = libc::iovec {
                iov_base: self.bufs[k].as_mut_ptr() as *mut libc::c_void,
                iov_len: RECV_BUF,
            };
            let h = &mut self.hdrs[k].msg_hdr;
            h.msg_name = &mut self.addrs[k] as *mut _ as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iov[k];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
        }
        // SAFETY: RECV_BATCH valid headers pointing into our own buffers.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        r.max(0) as usize
    }

    pub fn get(&self, k: usize) -> (SocketAddrV4, &[u8]) {
        let a = &self.addrs[k];
        let src = SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
            u16::from_be(a.sin_port),
        );
        let len = (self.hdrs[k].msg_len as usize).min(RECV_BUF);
        (src, &self.bufs[k][..len])
    }
}
