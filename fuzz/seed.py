#!/usr/bin/env python3
"""Writes the fuzz seed corpora into fuzz/corpus/<target>/ from the SIPp
scenarios (every message a scenario sends, with SIPp's keywords filled in
with plausible values) and hand-made RTP packets and packet sequences.
Run by deploy/fuzz.sh before fuzzing; the output is not committed."""

import glob
import hashlib
import os
import re
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")

KEYWORDS = {
    "service": "100", "remote_ip": "127.0.0.1", "remote_port": "5060",
    "local_ip": "127.0.0.3", "local_port": "5062", "transport": "UDP",
    "media_ip": "127.0.0.3", "media_ip_type": "4", "media_port": "40000",
    "rtpstream_audio_port": "40000", "pid": "4242", "call_number": "1",
    "call_id": "1-4242@127.0.0.3", "cseq": "1", "caller": "200",
    "routes": "", "next_url": "sip:100@127.0.0.1:5060",
}


def save(target, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def fill(text):
    def sub(m):
        key = m.group(1)
        if key.startswith("last_"):
            return ""
        return KEYWORDS.get(key.split(":")[0], "")
    text = re.sub(r"\[([a-z_0-9:+-]+)\]", sub, text)
    lines = [l.strip() for l in text.strip().splitlines()]
    lines = [l for l in lines if l]
    if not lines:
        return None
    # SIPp sends header lines, a blank line, then the body; rebuild that shape.
    head, body = [], []
    target = head
    for l in lines:
        if l.startswith("v=0"):
            target = body
        target.append(l)
    body_text = "".join(l + "\r\n" for l in body)
    head_text = "\r\n".join(head)
    head_text = re.sub(r"(?im)^(content-length|l)\s*:.*$", "", head_text)
    head_text = "\r\n".join(l for l in head_text.split("\r\n") if l)
    msg = f"{head_text}\r\nContent-Length: {len(body_text.encode())}\r\n\r\n{body_text}"
    return msg.encode(), body_text.encode()


def sip_seeds():
    n = 0
    for path in sorted(glob.glob(os.path.join(ROOT, "sip-scenarios", "*", "*.xml"))):
        xml = open(path, encoding="utf-8", errors="replace").read()
        for block in re.findall(r"<send[^>]*>\s*<!\[CDATA\[(.*?)\]\]>", xml, re.S):
            got = fill(block)
            if not got:
                continue
            msg, body = got
            save("sip_parser", msg)
            # The framer target reads a chunk size from the first byte.
            save("sip_framer", bytes([7]) + b"\r\n\r\n" + msg + msg)
            if body:
                save("sdp", body)
            n += 1
    return n


def rtp(pt, seq, ts, ssrc, payload, marker=False):
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq, ts, ssrc) + payload


def rtp_seeds():
    save("rtp", rtp(8, 1, 160, 0xCA110001, bytes(160)))
    save("rtp", rtp(0, 2, 320, 1, bytes(160), marker=True))
    # CSRC, extension and padding.
    p = bytes([0xB1, 0x88, 0x12, 0x34, 0, 0, 1, 0, 0xDE, 0xAD, 0xBE, 0xEF])
    save("rtp", p + bytes([1, 2, 3, 4, 0xBE, 0xDE, 0, 1, 9, 9, 9, 9, 7, 7, 7, 0, 2]))
    save("rtp", rtp(101, 3, 480, 1, bytes([1, 0x80, 0, 160])))


def timeline_seeds():
    # Records: pt choice, seq step (+8 bias), ts step (2 bytes), ssrc/party, arrival ms, length.
    def rec(pt_idx, seq_step, ts_step, sel, ms, payload):
        return bytes([pt_idx, (seq_step + 8) & 0xFF]) + struct.pack("!H", ts_step) + bytes([sel, ms, len(payload)]) + payload
    alaw = bytes([0xD5] * 160)
    steady = b"".join(rec(1, 1, 160, i & 1, 10, alaw) for i in range(40))
    save("recorder_timeline", steady)
    reorder = b"".join(rec(1, 2 if i % 3 == 0 else -1, 160, 0, 20, alaw) for i in range(30))
    save("recorder_timeline", reorder)
    jump = steady[:70] + rec(0, 1, 40000, 2, 20, bytes(160)) + rec(4, 1, 0, 0, 20, bytes([1, 0x80, 0, 160]))
    save("recorder_timeline", jump)
    save("recorder_timeline", b"".join(rec(2, 1, 160, 0, 20, bytes(160)) for _ in range(10)))


def main():
    n = sip_seeds()
    rtp_seeds()
    timeline_seeds()
    print(f"seed.py: {n} SIP messages from the scenarios, seeds in {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
