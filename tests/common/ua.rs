//! A minimal SIP user agent for tests that must see or shape the media
//! themselves (what SIPp cannot: it never reads the RTP it is sent). It speaks
//! just enough SIP over UDP to place one call through the proxy: INVITE with a
//! G.711 offer, ACK, CANCEL and BYE, and sends and receives RTP on its own socket.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// One caller.
pub struct Ua {
    pub sip: UdpSocket,
    pub media: UdpSocket,
    pub local: SocketAddr,
    pub call_id: String,
    from_tag: String,
    to: String,
    target: String,
    cseq: u32,
    invite_branch: String,
    proxy: SocketAddr,
    request_uri: String,
    from_user: String,
}

/// A SIP message as text, with a few accessors.
#[derive(Debug, Clone)]
pub struct Msg(pub String);

impl Msg {
    pub fn code(&self) -> u16 {
        if !self.0.starts_with("SIP/2.0 ") {
            return 0;
        }
        self.0.get(8..11).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.0.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    pub fn cseq(&self) -> &str {
        self.header("CSeq").unwrap_or("")
    }

    /// Where the SDP wants RTP.
    pub fn sdp_target(&self) -> Option<SocketAddr> {
        let ip = self
            .0
            .lines()
            .find_map(|l| l.strip_prefix("c=IN IP4 "))?
            .trim();
        let port = self
            .0
            .lines()
            .find_map(|l| l.strip_prefix("m=audio "))?
            .split_whitespace()
            .next()?;
        format!("{ip}:{port}").parse().ok()
    }
}

impl Ua {
    /// Binds SIP and media sockets on `ip` (two consecutive free ports).
    pub fn new(ip: &str, proxy: SocketAddr) -> Ua {
        let base = super::free_ports(2);
        let sip = UdpSocket::bind((ip, base)).unwrap();
        let media = UdpSocket::bind((ip, base + 1)).unwrap();
        sip.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        media
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let local = sip.local_addr().unwrap();
        Ua {
            call_id: format!("ua-{base}@{ip}"),
            sip,
            media,
            local,
            from_tag: format!("ua{base}"),
            to: String::new(),
            target: String::new(),
            cseq: 1,
            invite_branch: format!("z9hG4bKua{base}"),
            proxy,
            request_uri: String::new(),
            from_user: String::new(),
        }
    }

    fn send(&self, text: &str) {
        self.sip.send_to(text.as_bytes(), self.proxy).unwrap();
    }

    /// Sends an INVITE from `from_user` to `to_user` with a PCMA offer.
    pub fn invite(&mut self, from_user: &str, to_user: &str) {
        let ip = self.local.ip();
        let mport = self.media.local_addr().unwrap().port();
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {mport} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        );
        self.request_uri = format!("sip:{to_user}@{}", self.proxy);
        self.from_user = from_user.to_string();
        self.to = format!("<sip:{to_user}@{}>", self.proxy);
        let text = format!(
            "INVITE {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{from_user}@{ip}>;tag={}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 INVITE\r\nContact: <sip:{from_user}@{}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            self.request_uri, self.local, self.invite_branch, self.from_tag, self.to, self.call_id, self.local, sdp.len()
        );
        self.send(&text);
    }

    /// Waits for a response whose CSeq contains `cseq` and whose code passes `want`.
    pub fn wait_response(&self, cseq: &str, timeout: Duration, want: impl Fn(u16) -> bool) -> Msg {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 65536];
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let Ok(n) = self.sip.recv(&mut buf) else {
                continue;
            };
            let m = Msg(String::from_utf8_lossy(&buf[..n]).to_string());
            if m.code() > 0 && m.cseq().contains(cseq) && want(m.code()) {
                return m;
            }
            seen.push(m.0.lines().next().unwrap_or("").to_string());
        }
        panic!("no matching response for {cseq} within {timeout:?}; saw {seen:?}");
    }

    /// Remembers the dialog from a 2xx (To tag, Contact) and ACKs it.
    pub fn ack(&mut self, ok: &Msg) {
        self.join_dialog(ok);
        let text = self.in_dialog("ACK", 1, "z9hG4bKack");
        self.send(&text);
    }

    /// Remembers the dialog (To tag, Contact) of a response: a 2xx, or a 1xx
    /// with a tag for requests in the early dialog.
    pub fn join_dialog(&mut self, resp: &Msg) {
        self.to = resp.header("To").unwrap_or_default().to_string();
        self.target = resp
            .header("Contact")
            .map(|c| {
                c.trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_else(|| self.request_uri.clone());
    }

    fn in_dialog(&self, method: &str, cseq: u32, branch: &str) -> String {
        let ip = self.local.ip();
        format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={branch}{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{}@{ip}>;tag={}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            self.target, self.local, self.from_user, self.from_tag, self.to, self.call_id
        )
    }

    /// Hangs up a confirmed call and waits for the 200.
    pub fn bye(&mut self) {
        self.cseq += 1;
        let text = self.in_dialog("BYE", self.cseq, "z9hG4bKbye");
        self.send(&text);
        self.wait_response(&format!("{} BYE", self.cseq), Duration::from_secs(5), |c| {
            c == 200
        });
    }

    /// Cancels the pending INVITE: expects 200 for the CANCEL and 487 for the INVITE, ACKs the 487.
    pub fn cancel(&mut self) {
        let ip = self.local.ip();
        let text = format!(
            "CANCEL {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{}@{ip}>;tag={}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
            self.request_uri, self.local, self.invite_branch, self.from_user, self.from_tag, self.to, self.call_id
        );
        self.send(&text);
        self.wait_response("1 CANCEL", Duration::from_secs(5), |c| c == 200);
        let r = self.wait_response("1 INVITE", Duration::from_secs(5), |c| c == 487);
        let to = r.header("To").unwrap_or_default();
        let ack = format!(
            "ACK {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{}@{ip}>;tag={}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            self.request_uri, self.local, self.invite_branch, self.from_user, self.from_tag, self.call_id
        );
        self.send(&ack);
    }

    /// Receives RTP for `dur`; returns (arrival, packet) pairs.
    pub fn recv_rtp(&self, dur: Duration) -> Vec<(Instant, Vec<u8>)> {
        let end = Instant::now() + dur;
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            if let Ok(n) = self.media.recv(&mut buf) {
                out.push((Instant::now(), buf[..n].to_vec()));
            }
        }
        out
    }

    /// RTP received until `enough` holds for what came so far, or `max` has
    /// passed: a window that ends early when all is there and waits out a
    /// late packet on a busy machine.
    pub fn recv_rtp_until(
        &self,
        max: Duration,
        enough: impl Fn(&[(Instant, Vec<u8>)]) -> bool,
    ) -> Vec<(Instant, Vec<u8>)> {
        let end = Instant::now() + max;
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while !enough(&out) && Instant::now() < end {
            if let Ok(n) = self.media.recv(&mut buf) {
                out.push((Instant::now(), buf[..n].to_vec()));
            }
        }
        out
    }

    /// Sends `dur` of an A-law sine tone to `to`, paced in real time.
    pub fn send_tone(&self, to: SocketAddr, freq: f64, dur: Duration) {
        let start = Instant::now();
        let packets = (dur.as_millis() / 20) as u32;
        for k in 0..packets {
            let mut p = vec![0x80, 8];
            p.extend_from_slice(&(k as u16).to_be_bytes());
            p.extend_from_slice(&(k * 160).to_be_bytes());
            p.extend_from_slice(&0x5157_0001u32.to_be_bytes());
            for i in 0..160 {
                let t = (k * 160 + i) as f64 / 8000.0;
                let v = (2.0 * std::f64::consts::PI * freq * t).sin() * 12000.0;
                p.push(callrec::recorder::encode_alaw(v as i16));
            }
            let due = start + Duration::from_millis(20 * k as u64);
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            self.media.send_to(&p, to).unwrap();
        }
    }
}

/// G.711 A-law decoding of one code (the crate's table, itself checked
/// against the G.711 formula in the recorder's tests).
pub fn alaw_decode(b: u8) -> i16 {
    callrec::recorder::ALAW_TO_LINEAR[b as usize]
}
