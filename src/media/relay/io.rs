//! A relay socket's system calls. A readable socket is read with one
//! `recvmmsg` for up to `BATCH` datagrams; when it returns fewer, the queue
//! is known to be empty and the socket's readiness is cleared at once,
//! without the extra receive that only comes back empty (tokio's own
//! `recv_from` needs one per packet to learn that). Sends never wait: a
//! full send buffer drops the datagram, as a congested network would.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Datagrams taken from a socket in one system call at most.
pub(super) const BATCH: usize = 2;
/// Largest datagram relayed; RTP over UDP stays far below it.
pub(super) const MAX_DATAGRAM: usize = 2048;

/// Receive buffers of one socket.
pub(super) type Bufs = [[u8; MAX_DATAGRAM]; BATCH];

/// One UDP socket of a stream, registered with the media thread's epoll.
pub(super) struct RelaySocket {
    fd: AsyncFd<std::net::UdpSocket>,
}

impl RelaySocket {
    /// Takes over a socket; must be called on the media thread that serves it.
    pub(super) fn new(socket: tokio::net::UdpSocket) -> io::Result<RelaySocket> {
        let std = socket.into_std()?;
        std.set_nonblocking(true)?;
        // Readable only: sends go straight to the socket and never wait.
        // SAFETY: the UdpSocket owns its descriptor, and the AsyncFd owns the
        // UdpSocket, so the descriptor stays open and the same until it drops.
        let fd = unsafe { AsyncFd::register_with_interest(std, Interest::READABLE) }?;
        Ok(RelaySocket { fd })
    }

    /// Waits for datagrams and receives up to `BATCH` of them into `bufs`;
    /// `from[i]` is the length and source of `bufs[i]`. Returns how many.
    pub(super) async fn recv_batch(
        &self,
        bufs: &mut Bufs,
        from: &mut [(usize, SocketAddr); BATCH],
    ) -> io::Result<usize> {
        loop {
            let mut ready = self.fd.readable().await?;
            match recvmmsg(self.fd.get_ref().as_raw_fd(), bufs, from) {
                Ok(n) => {
                    if n < BATCH {
                        // Fewer than asked for: nothing is left queued. A datagram
                        // arriving from now on raises a new edge, which this
                        // clearing cannot hide (tokio compares the event's tick).
                        ready.clear_ready();
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one datagram without waiting.
    pub(super) fn send_to(&self, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
        self.fd.get_ref().send_to(buf, dst)
    }

    /// The socket's local address.
    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }
}

fn recvmmsg(
    fd: i32,
    bufs: &mut Bufs,
    from: &mut [(usize, SocketAddr); BATCH],
) -> io::Result<usize> {
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut names: [libc::sockaddr_storage; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut iov: [libc::iovec; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    for i in 0..BATCH {
        iov[i] = libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: MAX_DATAGRAM,
        };
        msgs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        msgs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every pointer in `msgs` points into the locals and `bufs`
    // above, which outlive the call; the kernel writes at most the lengths given.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for i in 0..n {
        let len = (msgs[i].msg_len as usize).min(MAX_DATAGRAM);
        // A source the relay cannot name is never a party's: dropped as foreign.
        let src = to_socket_addr(&names[i]).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        from[i] = (len, src);
    }
    Ok(n)
}

fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
