//! A relay socket's system calls. A readable socket is read with one
//! `recvmmsg` for up to `BATCH` datagrams; when it returns fewer, the queue
//! is known to be empty, without the extra receive that only comes back
//! empty. Sends never wait: a full send buffer drops the datagram, as a
//! congested network would.
//!
//! Each datagram comes with the time the kernel received it
//! (`SO_TIMESTAMPNS`), so that a media thread the machine did not run for a
//! while hands the recorder the packets' real arrival, not one instant for
//! the whole backlog: the recorder places audio by arrival, and a backlog
//! stamped late would be late for its place.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

/// Datagrams taken from a socket in one system call at most.
pub(super) const BATCH: usize = 2;
/// Largest datagram relayed; RTP over UDP stays far below it.
pub(super) const MAX_DATAGRAM: usize = 2048;

/// Receive buffers of one socket.
pub(super) type Bufs = [[u8; MAX_DATAGRAM]; BATCH];

/// What `recv_batch` says of one datagram: its length, its source and when
/// the kernel received it.
pub(super) type Received = (usize, SocketAddr, Instant);

/// A kernel timestamp older than this is taken for a step of the wall clock
/// (the stamps are wall-clock time), and the packet's arrival for now.
const MAX_STAMP_AGE: Duration = Duration::from_secs(5);

/// Room for one datagram's ancillary data (one timestamp), aligned for `cmsghdr`.
type Control = [u64; 8];

/// One UDP socket of a stream; the media thread's epoll says when it is readable.
pub(super) struct RelaySocket {
    socket: std::net::UdpSocket,
}

impl RelaySocket {
    /// Takes over a socket, non-blocking and stamping what it receives.
    pub(super) fn new(socket: std::net::UdpSocket) -> io::Result<RelaySocket> {
        socket.set_nonblocking(true)?;
        // Without it (never seen on Linux) a packet's arrival is when it is read.
        let _ = enable_timestamps(socket.as_raw_fd());
        Ok(RelaySocket { socket })
    }

    /// Receives up to `BATCH` queued datagrams into `bufs` without waiting;
    /// `from[i]` is the length, source and arrival of `bufs[i]`. Returns
    /// how many: fewer than `BATCH` (0 included) means the queue is empty.
    pub(super) fn recv_batch(
        &self,
        bufs: &mut Bufs,
        from: &mut [Received; BATCH],
    ) -> io::Result<usize> {
        match recvmmsg(self.socket.as_raw_fd(), bufs, from) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            r => r,
        }
    }

    /// Sends one datagram without waiting.
    pub(super) fn send_to(&self, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
        self.socket.send_to(buf, dst)
    }

    /// The socket's local address.
    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The descriptor the media thread's epoll watches.
    pub(super) fn raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

/// Asks the kernel to stamp every datagram the socket receives.
fn enable_timestamps(fd: i32) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` lives across the call and its size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The kernel's receive time in a datagram's ancillary data, if there is one.
fn stamp_of(hdr: &libc::msghdr) -> Option<SystemTime> {
    // SAFETY: `hdr` is the header recvmmsg filled: its control pointer and
    // length describe ancillary data the kernel wrote into our buffer, which
    // the CMSG functions walk without reading past that length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - (data as usize - c as usize);
                // A timespec of two 64-bit fields (two 32-bit ones on 32-bit targets).
                let (sec, nsec) = if len >= 16 {
                    let t = std::ptr::read_unaligned(data.cast::<[i64; 2]>());
                    (t[0], t[1])
                } else if len >= 8 {
                    let t = std::ptr::read_unaligned(data.cast::<[i32; 2]>());
                    (i64::from(t[0]), i64::from(t[1]))
                } else {
                    return None;
                };
                let since_epoch =
                    Duration::new(u64::try_from(sec).ok()?, u32::try_from(nsec).ok()?);
                return SystemTime::UNIX_EPOCH.checked_add(since_epoch);
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

/// A wall-clock stamp as an instant, against a reading of both clocks
/// taken together; a stamp from the future or too far back means the wall
/// clock was stepped, and the reading is used.
fn arrival(stamp: Option<SystemTime>, now: Instant, wall: SystemTime) -> Instant {
    stamp
        .and_then(|s| wall.duration_since(s).ok())
        .filter(|age| *age <= MAX_STAMP_AGE)
        .and_then(|age| now.checked_sub(age))
        .unwrap_or(now)
}

fn recvmmsg(fd: i32, bufs: &mut Bufs, from: &mut [Received; BATCH]) -> io::Result<usize> {
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut names: [libc::sockaddr_storage; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut iov: [libc::iovec; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut control: [Control; BATCH] = [[0; 8]; BATCH];
    for i in 0..BATCH {
        iov[i] = libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: MAX_DATAGRAM,
        };
        msgs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        msgs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = control[i].as_mut_ptr().cast();
        msgs[i].msg_hdr.msg_controllen = size_of::<Control>() as _;
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
    // The wall clock first: a delay between the two readings then makes an
    // arrival late, never early (the recorder takes early arrivals for a
    // sender's clock running fast and corrects for them).
    let wall = SystemTime::now();
    let now = Instant::now();
    for i in 0..n {
        let len = (msgs[i].msg_len as usize).min(MAX_DATAGRAM);
        // A source the relay cannot name is never a party's: dropped as foreign.
        let src = to_socket_addr(&names[i]).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        from[i] = (len, src, arrival(stamp_of(&msgs[i].msg_hdr), now, wall));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_becomes_the_instant_it_names_unless_the_wall_clock_stepped() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let ms = Duration::from_millis;
        assert_eq!(arrival(Some(wall - ms(300)), now, wall), now - ms(300));
        assert_eq!(arrival(None, now, wall), now, "no stamp: read now");
        // Stepped back after the packet came (its stamp lies ahead), or
        // forward by more than a socket holds: the reading, not a guess.
        assert_eq!(arrival(Some(wall + ms(50)), now, wall), now);
        assert_eq!(arrival(Some(wall - MAX_STAMP_AGE - ms(1)), now, wall), now);
    }
}
