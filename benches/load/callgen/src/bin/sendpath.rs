//! What a relayed packet's system calls cost, and what batching them across
//! sockets through io_uring would save: the CPU of one thread per loopback
//! UDP datagram sent with `sendto` against the same datagrams submitted as
//! one io_uring batch (`IORING_OP_SENDMSG`), and received with one
//! `recvmmsg` per socket against one io_uring batch of `IORING_OP_RECVMSG`.
//! Many sockets with one datagram each is the relay's case: a call's socket
//! has one packet per 20 ms, so a batch can only span sockets.
//!
//! The io_uring batches run twice: on a ring as created by default, and on
//! one tuned for this use (a single issuer, task work deferred to the wait,
//! the sockets registered). io_uring's own worker threads, if any took a
//! request, are not counted (this thread's CPU only): that favours io_uring.
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

/// How a batch names its sockets: by descriptor, or by their index in the
/// ring's registered files (`first` + i).
#[derive(Clone, Copy)]
enum Files {
    Plain,
    Registered { first: u32 },
}

/// Submits one request per header on socket i and waits for all of them.
/// A failing request is reported once every request of the batch has
/// completed; a failing submission aborts, since the kernel may still
/// write into buffers that returning would free.
fn ring_batch(
    ring: &mut IoUring,
    fds: &[i32],
    files: Files,
    msgs: &mut [libc::msghdr],
    send: bool,
) -> io::Result<()> {
    let submit_or_abort = |r: io::Result<usize>| {
        if let Err(e) = r {
            eprintln!("io_uring submission failed with requests in flight: {e}");
            std::process::abort();
        }
    };
    for (i, (fd, m)) in fds.iter().zip(msgs.iter_mut()).enumerate() {
        let e = match (files, send) {
            (Files::Plain, true) => opcode::SendMsg::new(types::Fd(*fd), m).build(),
            (Files::Plain, false) => opcode::RecvMsg::new(types::Fd(*fd), m).build(),
            (Files::Registered { first }, true) => {
                opcode::SendMsg::new(types::Fixed(first + i as u32), m).build()
            }
            (Files::Registered { first }, false) => {
                opcode::RecvMsg::new(types::Fixed(first + i as u32), m).build()
            }
        }
        .user_data(i as u64);
        // SAFETY: the header, its iovec, name and buffer outlive the wait below.
        while unsafe { ring.submission().push(&e) }.is_err() {
            submit_or_abort(ring.submit());
        }
    }
    submit_or_abort(ring.submit_and_wait(fds.len()));
    let (mut done, mut failed) = (0, None);
    while done < fds.len() {
        for cqe in ring.completion() {
            if cqe.result() < 0 {
                failed = Some(io::Error::from_raw_os_error(-cqe.result()));
            }
            done += 1;
        }
        if done < fds.len() {
            submit_or_abort(ring.submit_and_wait(fds.len() - done));
        }
    }
    failed.map_or(Ok(()), Err)
}

fn main() -> io::Result<()> {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let n = args.next().unwrap_or(500);
    let rounds = args.next().unwrap_or(3000);
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
    // The ring as created by default, and one set up for a single thread
    // that waits for its completions (no task work run at every system
    // call) with the sockets registered (no descriptor look-up per request).
    let mut ring = IoUring::new(1024)?;
    let mut tuned = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(1024)?;
    tuned
        .submitter()
        .register_files(&[&tx_fd[..], &rx_fd[..]].concat())?;
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

    // CPU per way: [system call per socket, io_uring, io_uring tuned].
    let (mut send, mut recv) = ([0.0f64; 3], [0.0f64; 3]);
    let (mut sends, mut recvs) = ([0usize; 3], [0usize; 3]);
    for round in 0..rounds {
        // The ways take turns round by round, so that the machine's drift
        // in speed falls on all of them alike.
        let way = round % 3;
        let t = thread_cpu();
        match way {
            0 => {
                for (s, d) in tx.iter().zip(&dst) {
                    s.send_to(&payload, d)?;
                }
            }
            1 => ring_batch(&mut ring, &tx_fd, Files::Plain, &mut out, true)?,
            _ => ring_batch(
                &mut tuned,
                &tx_fd,
                Files::Registered { first: 0 },
                &mut out,
                true,
            )?,
        }
        send[way] += thread_cpu() - t;
        sends[way] += n;
        // Every receiving socket now holds one datagram.
        let way = (round / 3) % 3;
        let t = thread_cpu();
        match way {
            0 => {
                for (i, fd) in rx_fd.iter().enumerate() {
                    // Room for two, as the relay reads (one returned says
                    // the queue is empty); the first into the socket's own buffer.
                    let mut m = [i, (i + 1) % n].map(|k| libc::mmsghdr {
                        msg_hdr: inn[k],
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
            }
            1 => ring_batch(&mut ring, &rx_fd, Files::Plain, &mut inn, false)?,
            _ => ring_batch(
                &mut tuned,
                &rx_fd,
                Files::Registered { first: n as u32 },
                &mut inn,
                false,
            )?,
        }
        recv[way] += thread_cpu() - t;
        recvs[way] += n;
    }
    let per = |cpu: f64, datagrams: usize| cpu * 1e6 / datagrams.max(1) as f64;
    println!("{n} sockets, {rounds} rounds, CPU µs per datagram of this thread:");
    println!(
        "  send: sendto {:.2}, io_uring batch {:.2}, tuned {:.2}",
        per(send[0], sends[0]),
        per(send[1], sends[1]),
        per(send[2], sends[2])
    );
    println!(
        "  receive: recvmmsg {:.2}, io_uring batch {:.2}, tuned {:.2}",
        per(recv[0], recvs[0]),
        per(recv[1], recvs[1]),
        per(recv[2], recvs[2])
    );
    Ok(())
}
