#!/usr/bin/env python3
"""Writes a pcap of one RTP stream for SIPp's play_pcap_audio (callrec load
benchmark, benches/load/run.py uses it).

  mkpcap.py AUDIO.al OUT.pcap SECONDS SSRC

AUDIO.al is raw A-law at 8 kHz (looped as needed); the stream is PCMA (PT 8),
20 ms per packet (160 bytes), sequence numbers and timestamps counting up from
0, one fixed SSRC, packet times 20 ms apart. Ethernet/IPv4/UDP framing with
placeholder addresses and ports: SIPp replaces them with the call's own.

Why a pcap and not rtp_stream: SIPp 3.6.1's rtp_stream gives call k the same
SSRC in every SIPp instance, so both parties of a call would send one SSRC; a
recorder that keys parties by SSRC (rtpengine-recording does, per call) would
then merge them. With two pcaps the caller and callee each have their own SSRC.
"""
import struct
import sys


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    audio = open(sys.argv[1], "rb").read()
    out, seconds, ssrc = sys.argv[2], float(sys.argv[3]), int(sys.argv[4], 0)
    packets = int(round(seconds * 50))
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    with open(out, "wb") as f:
        # pcap global header: magic, v2.4, tz 0, sigfigs 0, snaplen, DLT_EN10MB
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        pos = 0
        for i in range(packets):
            chunk = bytearray()
            while len(chunk) < 160:
                take = audio[pos:pos + 160 - len(chunk)]
                if not take:
                    pos = 0
                    continue
                chunk += take
                pos += len(take)
            rtp = struct.pack("!BBHII", 0x80, 8, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, ssrc) + bytes(chunk)
            udp = struct.pack("!HHHH", 16000, 18000, 8 + len(rtp), 0) + rtp
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0, src, dst)
            ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
            frame = b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00" + ip + udp
            t_us = i * 20000
            f.write(struct.pack("<IIII", t_us // 1000000, t_us % 1000000, len(frame), len(frame)))
            f.write(frame)


if __name__ == "__main__":
    main()
