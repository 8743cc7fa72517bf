//! The two answers a call's dialog turns on: the caller handling a response
//! (provisional, 200 with the callee's SDP and then ACK and media, or a
//! failure), and the callee answering a new INVITE (180 and 200 with its SDP).

use super::{bind, cpu_now, CState, Callee, Sip, Timer, CALLEE, CALLER, SSRC_BASE, T1};
use crate::media::{Cmd, LaneRef};
use crate::sip::{self, Msg};
use crate::srtp::{self, CallCrypto};
use std::cmp::Reverse;
use std::net::SocketAddr;
use std::time::Instant;

impl Sip {
    pub(super) fn caller_response(&mut self, m: &Msg<'_>) {
        let Some(k) = self.caller_index(m.call_id) else {
            return;
        };
        let proxy: SocketAddr = self.plan.proxy.into();
        let now = Instant::now();
        let method = m.cseq_method();
        let ki = k as usize;
        if method == "BYE" {
            if m.status >= 200 && self.callers[ki].state == CState::Byeing {
                self.callers[ki].state = CState::Done;
                self.active -= 1;
                if m.status < 300 {
                    if self.callers[ki].ok_on_bye {
                        self.out.ok += 1;
                    }
                } else {
                    self.fail(&format!("bye_{}", m.status));
                }
            }
            return;
        }
        if method != "INVITE" {
            return;
        }
        match m.status {
            100..=199 => {
                if self.callers[ki].state == CState::Inviting {
                    self.callers[ki].state = CState::Proceeding;
                }
            }
            200..=299 => {
                let c = &self.callers[ki];
                if c.state != CState::Inviting && c.state != CState::Proceeding {
                    // A retransmitted 200: its ACK was lost.
                    if !c.ack.is_empty() {
                        let ack = c.ack.clone();
                        self.send(CALLER, &ack, proxy);
                    }
                    return;
                }
                let Some(remote) = m.sdp_audio() else {
                    self.callers[ki].state = CState::Done;
                    self.fail("answer_without_sdp");
                    return;
                };
                let me = self.plan.sides[CALLER];
                let num = &self.plan.number;
                let from = format!("<sip:{num}@{me}>;tag=cg{k}");
                let target = if m.contact.is_empty() {
                    format!("sip:{}", self.plan.proxy)
                } else {
                    m.contact_uri().to_string()
                };
                let routes: String = m
                    .record_routes
                    .iter()
                    .rev()
                    .map(|r| format!("Route: {r}\r\n"))
                    .collect();
                let via =
                    |n: &str| format!("SIP/2.0/UDP {me};branch=z9hG4bK-cg{}-{k}-{n}", self.run_id);
                let ack = sip::request(
                    "ACK",
                    &target,
                    &via("a"),
                    &from,
                    m.to,
                    m.call_id,
                    1,
                    &routes,
                    "",
                );
                let bye = sip::request(
                    "BYE",
                    &target,
                    &via("b"),
                    &from,
                    m.to,
                    m.call_id,
                    2,
                    &routes,
                    "",
                );
                self.send(CALLER, &ack, proxy);
                self.out
                    .setup_ms
                    .push((now - self.callers[ki].started).as_secs_f64() * 1000.0);
                let first = self.out.answered.map_or(now, |(f, _)| f);
                self.out.answered = Some((first, now));
                let crypto = match self.caller_crypto(ki, m.body) {
                    Ok(c) => c,
                    Err(reason) => {
                        // Answered, but not with media we can use: the call is
                        // ended at once and counted as failed.
                        self.fail(reason);
                        let c = &mut self.callers[ki];
                        c.state = CState::Confirmed;
                        c.ok_on_bye = false;
                        c.ack = ack;
                        c.bye = bye;
                        self.active += 1;
                        self.timers.push(Reverse((now, Timer::SendBye(k))));
                        return;
                    }
                };
                let c = &mut self.callers[ki];
                c.state = CState::Confirmed;
                c.ack = ack;
                c.bye = bye;
                let lane = match c.own.take() {
                    Some(s) => LaneRef::Own(s),
                    None => LaneRef::Shared(CALLER),
                };
                let tx = &self.media[c.thread];
                let _ = tx.send(Cmd::Open {
                    call: k,
                    party: CALLER,
                    lane,
                    remote,
                    ssrc: SSRC_BASE[CALLER] + k,
                    expect_ssrc: Some(SSRC_BASE[CALLEE] + k),
                    crypto,
                });
                let _ = tx.send(Cmd::Start {
                    call: k,
                    party: CALLER,
                    at: now,
                    packets: self.plan.packets,
                });
                self.timers
                    .push(Reverse((now + self.plan.hold, Timer::SendBye(k))));
                self.active += 1;
                self.out.max_concurrent = self.out.max_concurrent.max(self.active);
                if self.active == self.plan.calls && self.all_up.is_none() {
                    self.all_up = Some(now);
                    self.out.rusage_at_plateau = Some(cpu_now());
                }
            }
            _ => {
                // Non-2xx final: ACK it (same branch as the INVITE) and count the call as failed.
                let c = &self.callers[ki];
                if c.state == CState::Inviting || c.state == CState::Proceeding {
                    let me = self.plan.sides[CALLER];
                    let num = &self.plan.number;
                    let from = format!("<sip:{num}@{me}>;tag=cg{k}");
                    let via = format!("SIP/2.0/UDP {me};branch=z9hG4bK-cg{}-{k}-i", self.run_id);
                    let uri = format!("sip:{}@{}", self.plan.service, self.plan.proxy);
                    let ack = sip::request("ACK", &uri, &via, &from, m.to, m.call_id, 1, "", "");
                    self.send(CALLER, &ack, proxy);
                    self.callers[ki].state = CState::Done;
                    self.fail(&format!("invite_{}", m.status));
                }
            }
        }
    }

    /// The caller's crypto contexts for an answer, when it offered SRTP:
    /// built once here, then used for every packet of the call.
    fn caller_crypto(
        &self,
        ki: usize,
        answer: &str,
    ) -> Result<Option<Box<CallCrypto>>, &'static str> {
        let Some(mut send) = self.callers[ki].key else {
            return Ok(None);
        };
        let mut recv = srtp::answer_key(answer).ok_or("answer_without_crypto")?;
        if self.plan.srtp_corrupt_key {
            send[0] ^= 1;
            recv[0] ^= 1;
        }
        CallCrypto::new(&send, &recv)
            .map(|c| Some(Box::new(c)))
            .map_err(|_| "bad_crypto_key")
    }

    pub(super) fn callee_invite(&mut self, m: &Msg<'_>, from: SocketAddr) {
        if let Some(&j) = self.callee_ids.get(m.call_id) {
            // A retransmitted INVITE (or a re-INVITE): answer again with the same 200.
            let ok = self.callees[j as usize].ok.clone();
            self.send(CALLEE, &ok, from);
            return;
        }
        let Some(remote) = m.sdp_audio() else {
            self.send(
                CALLEE,
                &sip::response(m, 488, "Not Acceptable Here", Some("cgx"), "", ""),
                from,
            );
            return;
        };
        // Straight from our own caller (no proxy in between) the Call-ID names
        // the call, so both parties share the number and SSRCs pair up.
        let j = match self.caller_index(m.call_id) {
            Some(k) => k,
            None => 0x0100_0000 + self.callees.len() as u32,
        };
        let paired = j < 0x0100_0000;
        let idx = self.callees.len() as u32;
        let thread = idx as usize % self.media.len();
        let me = self.plan.sides[CALLEE];
        let (port, lane) = if self.plan.per_call_sockets {
            match bind(*me.ip(), 0).and_then(|s| Ok((s.local_addr()?.port(), s))) {
                Ok((p, s)) => (p, LaneRef::Own(s)),
                Err(_) => {
                    self.send(
                        CALLEE,
                        &sip::response(m, 503, "No Ports", Some("cgx"), "", ""),
                        from,
                    );
                    return;
                }
            }
        } else {
            (self.shared_ports[thread][CALLEE], LaneRef::Shared(CALLEE))
        };
        let tag = format!("cge{idx}");
        let contact = format!("Contact: <sip:callee@{me};transport=udp>\r\n");
        let ringing = sip::response(m, 180, "Ringing", Some(&tag), &contact, "");
        let body = sip::sdp(*me.ip(), port, u64::from(idx), "callee", None);
        let ok = sip::response(m, 200, "OK", Some(&tag), &contact, &body);
        self.send(CALLEE, &ringing, from);
        self.send(CALLEE, &ok, from);
        let _ = self.media[thread].send(Cmd::Open {
            call: idx,
            party: CALLEE,
            lane,
            remote,
            ssrc: if paired {
                SSRC_BASE[CALLEE] + j
            } else {
                SSRC_BASE[CALLEE] + idx
            },
            expect_ssrc: paired.then_some(SSRC_BASE[CALLER] + j),
            crypto: None,
        });
        let now = Instant::now();
        self.callee_ids.insert(m.call_id.to_string(), idx);
        self.callees.push(Callee {
            answered: true,
            confirmed: false,
            done: false,
            ok,
            from,
            interval: T1,
            first: now,
        });
        self.out.callee_dialogs += 1;
        self.timers.push(Reverse((now + T1, Timer::OkRetrans(idx))));
    }
}
