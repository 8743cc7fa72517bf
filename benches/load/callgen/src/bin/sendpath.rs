//! What a relayed packet's system calls cost, and what batching them across
//! sockets through io_uring would save: the CPU of one thread per loopback
//! UDP datagram sent with `sendto` against the same datagrams submitted as
//! one io_uring batch (`IORING_OP_SENDMSG`), and received with one
//! `recvmmsg` per socket against one io_uring batch of `IORING_OP_RECVMSG`.
//! Many sockets with one datagram each is the relay's case: a call's socket
//! has one packet per 20 ms, so a batch can only span sockets.
//!
//! `cargo run --release --manifest-path benches/load/callgen/Cargo.toml --bin sendpath [SOCKETS] [ROUNDS]`
//! (BENCHMARKS.md, "Three more tries at the userspace relay").

use std::io;
use std::mem::zeroed;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use io_uring::{opcode, types, IoUring};

/// CPU seconds (user + system) of the calling thread so far.
fn thread_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut r: libc::rusage = unsafe { zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut r) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(r.ru_utime) + tv(r.ru_stime)
}

fn sockaddr(a: SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(v) = a else {
        panic!("IPv4 loopback only")
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// One message header per socket, pointing at `iov[i]` and `name[i]`.
fn headers(iov: &mut [libc::iovec], name: &mut [libc::sockaddr_in]) -> Vec<libc::msghdr> {
    iov.iter_mut()
        .zip(name.iter_mut())
        .map(|(iov, name)| {
            // SAFETY: all-zero is a valid msghdr.
            let mut m: libc::msghdr = unsafe { zeroed() };
            m.msg_name = (name as *mut libc::sockaddr_in).cast();
            m.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            m.msg_iov = iov;
            m.msg_iovlen = 1;
            m
        })
        .collect()
}

/// Submits one SQE per header on `fds[i]` and waits for all completions.
fn ring_batch(
    ring: &mut IoUring,
    fds: &[i32],
    msgs: &mut [libc::msghdr],
    send: bool,
) -> io::Result<()> {
    for (i, (fd, m)) in fds.iter().zip(msgs.iter_mut()).enumerate() {
        let e = if send {
            opcode::SendMsg::new(types::Fd(*fd), m).build()
        } else {
            opcode::RecvMsg::new(types::Fd(*fd), m).build()
        }
        .user_data(i as u64);
        // SAFETY: the header, its iovec, name and buffer outlive the wait below.
        while unsafe { ring.submission().push(&e) }.is_err() {
            ring.submit()?;
        }
    }
    ring.submit_and_wait(fds.len())?;
    let mut done = 0;
    while done < fds.len() {
        for cqe in ring.completion() {
            if cqe.result() < 0 {
                return Err(io::Error::from_raw_os_error(-cqe.result()));
            }
            done += 1;
        }
        if done < fds.len() {
            ring.submit_and_wait(fds.len() - done)?;
        }
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let n = args.next().unwrap_or(500);
    let rounds = args.next().unwrap_or(2000);
    assert!(n >= 2, "at least two sockets");
    let tx: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let rx: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    for s in &rx {
        s.set_nonblocking(true)?;
    }
    let tx_fd: Vec<i32> = tx.iter().map(|s| s.as_raw_fd()).collect();
    let rx_fd: Vec<i32> = rx.iter().map(|s| s.as_raw_fd()).collect();
    let dst: Vec<SocketAddr> = rx
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<_, _>>()?;
    // A G.711 packet of 20 ms: 12 bytes of header, 160 of audio.
    let payload = [0xd5u8; 172];
    let mut ring = IoUring::new(1024)?;
    let mut out_iov: Vec<libc::iovec> = (0..n)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        })
        .collect();
    let mut out_name: Vec<libc::sockaddr_in> = dst.iter().map(|a| sockaddr(*a)).collect();
    let mut out = headers(&mut out_iov, &mut out_name);
    let mut bufs = vec![[0u8; 2048]; n];
    let mut in_iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut in_name: Vec<libc::sockaddr_in> = (0..n).map(|_| unsafe { zeroed() }).collect();
    let mut inn = headers(&mut in_iov, &mut in_name);

    let (mut send_plain, mut send_ring, mut recv_plain, mut recv_ring) = (0.0, 0.0, 0.0, 0.0);
    for round in 0..rounds {
        // Alternate which way goes first, so that neither always finds the caches warm.
        let ring_sends = round % 2 == 0;
        let t = thread_cpu();
        if ring_sends {
            ring_batch(&mut ring, &tx_fd, &mut out, true)?;
            send_ring += thread_cpu() - t;
        } else {
            for (s, d) in tx.iter().zip(&dst) {
                s.send_to(&payload, d)?;
            }
            send_plain += thread_cpu() - t;
        }
        // Every receiving socket now holds one datagram.
        let t = thread_cpu();
        if round % 4 < 2 {
            ring_batch(&mut ring, &rx_fd, &mut inn, false)?;
            recv_ring += thread_cpu() - t;
        } else {
            for fd in &rx_fd {
                // Room for two, as the relay reads: one returned says the queue is empty.
                let mut m = [0, 1].map(|i| libc::mmsghdr {
                    msg_hdr: inn[i],
                    msg_len: 0,
                });
                // SAFETY: both headers point at live buffers, names and iovecs.
                let r = unsafe {
                    libc::recvmmsg(
                        *fd,
                        m.as_mut_ptr(),
                        2,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if r != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            recv_plain += thread_cpu() - t;
        }
    }
    let per = |cpu: f64| cpu * 1e6 / (n * rounds / 2) as f64;
    println!("{n} sockets, {rounds} rounds, CPU µs per datagram of this thread:");
    println!(
        "  send: sendto {:.2}, io_uring batch {:.2}",
        per(send_plain),
        per(send_ring)
    );
    println!(
        "  receive: recvmmsg {:.2}, io_uring batch {:.2}",
        per(recv_plain),
        per(recv_ring)
    );
    Ok(())
}
