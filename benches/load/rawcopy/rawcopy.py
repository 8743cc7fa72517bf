#!/usr/bin/env python3
"""What a raw UDP socket costs a sender on the same host.

SIPp 3.6.1 plays pcap audio through one raw IPPROTO_UDP socket per playing
call, bound to its media address, and never reads it. Linux hands every such
socket a clone of each UDP datagram addressed to that address, in the sending
process's system call (loopback delivers in the sender's context). So every
packet a relay sends to a SIPp side costs the relay one clone per concurrent
call of that side. This script measures it: CPU time of one process sending
UDP datagrams to 127.0.1.3 with 0, 100, 300 and 600 raw sockets bound there.

Run as root (raw sockets). Prints µs of CPU per datagram sent.
"""
import resource
import socket
import sys

DEST = "127.0.1.3"
N_PACKETS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
PAYLOAD = b"\x80\x08" + bytes(170)  # an RTP packet's size: 12 + 160


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(n_raw):
    raws = []
    for _ in range(n_raw):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        s.bind((DEST, 0))
        raws.append(s)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((DEST, 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.1.1", 0))
    dst = rx.getsockname()
    t0 = cpu()
    for _ in range(N_PACKETS):
        tx.sendto(PAYLOAD, dst)
    used = cpu() - t0
    for s in raws + [rx, tx]:
        s.close()
    return used / N_PACKETS * 1e6


def main():
    for n in (0, 100, 300, 600, 0):
        print(f"raw sockets bound to {DEST}: {n:4d}  CPU per datagram sent: {run(n):6.2f} µs", flush=True)


if __name__ == "__main__":
    main()
