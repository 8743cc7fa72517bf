//! RFC 3261 §17 transactions, as plain state owned by a call's task: each
//! transaction knows what to retransmit and when (timers A/B/D/E/F/G/H/I/J/K),
//! and the call polls them from its single event loop. Over TCP nothing is
//! retransmitted and the absorbing states end at once.

use std::time::{Duration, Instant};

use super::message::Message;
use super::transport::{Flow, Proto};
use crate::vocab::Side;

/// T1: RTT estimate.
pub const T1: Duration = Duration::from_millis(500);
/// T2: longest retransmit interval for non-INVITE requests and INVITE responses.
pub const T2: Duration = Duration::from_secs(4);
/// T4: how long a message may stay in the network.
pub const T4: Duration = Duration::from_secs(5);

/// What a timer asks the owner to do.
#[derive(Debug)]
pub enum TimerAction {
    /// Send these bytes again on the transaction's flow.
    Retransmit(Vec<u8>, Flow),
    /// The peer never answered (timer B/F) or never ACKed (timer H).
    TimedOut,
}

/// State of a client transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Request sent, nothing heard.
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived; absorbing retransmissions.
    Completed,
    /// Done; may be removed.
    Terminated,
}

/// What to do with a response a client transaction received.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseVerdict {
    /// New information for the call.
    Deliver,
    /// A retransmitted final non-2xx: ACK again (INVITE) or ignore.
    Retransmission,
}

/// A request we sent, waiting for its final response.
#[derive(Debug)]
pub struct ClientTxn {
    /// Leg it was sent on.
    pub side: Side,
    /// Via branch.
    pub branch: String,
    /// Method of the request.
    pub method: String,
    /// CSeq number.
    pub cseq: u32,
    /// The request as sent (for CANCEL and ACK construction).
    pub request: Message,
    /// Where it went.
    pub flow: Flow,
    /// Current state.
    pub state: ClientState,
    /// Index of the server transaction this request relays, if any.
    pub relays: Option<u64>,
    /// Final status received.
    pub final_code: Option<u16>,
    bytes: Vec<u8>,
    interval: Duration,
    next: Option<Instant>,
    deadline: Instant,
}

impl ClientTxn {
    /// Starts tracking a request that was just sent.
    pub fn new(side: Side, request: Message, flow: Flow, now: Instant) -> ClientTxn {
        let branch = request.branch().unwrap_or_default();
        let (cseq, method) = request.cseq().unwrap_or((0, request.method()));
        let udp = flow.proto == Proto::Udp;
        ClientTxn {
            side,
            branch,
            method,
            cseq,
            bytes: request.to_bytes(),
            request,
            flow,
            state: ClientState::Calling,
            relays: None,
            final_code: None,
            interval: T1,
            next: udp.then_some(now + T1),
            deadline: now + 64 * T1,
        }
    }

    /// The serialised request.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Feeds a response to the state machine.
    pub fn on_response(&mut self, code: u16, now: Instant) -> ResponseVerdict {
        let invite = self.method == "INVITE";
        match self.state {
            ClientState::Completed | ClientState::Terminated => {
                // 2xx retransmissions to INVITE must reach the call (it re-ACKs).
                if invite && (200..300).contains(&code) {
                    return ResponseVerdict::Deliver;
                }
                ResponseVerdict::Retransmission
            }
            _ if code < 200 => {
                self.state = ClientState::Proceeding;
                if invite {
                    // Timer A stops on a provisional; timer B is replaced by
                    // the callee's own ringing time, bounded by the caller.
                    self.next = None;
                    self.deadline = now + Duration::from_secs(300);
                } else if self.next.is_some() {
                    self.interval = T2;
                }
                ResponseVerdict::Deliver
            }
            _ => {
                self.final_code = Some(code);
                self.next = None;
                let absorb = if self.flow.proto == Proto::Udp {
                    if invite {
                        64 * T1 // timer D (≥ 32 s)
                    } else {
                        T4 // timer K
                    }
                } else {
                    Duration::ZERO
                };
                if invite && (200..300).contains(&code) {
                    // The call ACKs 2xx itself and keeps absorbing retransmissions.
                    self.state = ClientState::Completed;
                    self.deadline = now + 64 * T1;
                } else {
                    self.state = ClientState::Completed;
                    self.deadline = now + absorb;
                }
                ResponseVerdict::Deliver
            }
        }
    }

    /// The next instant at which `poll` has something to do.
    pub fn next_deadline(&self) -> Instant {
        match self.next {
            Some(n) if n < self.deadline => n,
            _ => self.deadline,
        }
    }

    /// Runs the timers due at `now`.
    pub fn poll(&mut self, now: Instant) -> Option<TimerAction> {
        if self.state == ClientState::Terminated {
            return None;
        }
        if now >= self.deadline {
            let was = self.state;
            self.state = ClientState::Terminated;
            return (was != ClientState::Completed).then_some(TimerAction::TimedOut);
        }
        match self.next {
            Some(n) if now >= n => {
                let cap = if self.method == "INVITE" {
                    None
                } else {
                    Some(T2)
                };
                self.interval = match cap {
                    Some(c) => (self.interval * 2).min(c),
                    None => self.interval * 2,
                };
                self.next = Some(now + self.interval);
                Some(TimerAction::Retransmit(self.bytes.clone(), self.flow))
            }
            _ => None,
        }
    }

    /// True once the transaction may be forgotten.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }
}

/// A request we received, until its final response is delivered and absorbed.
#[derive(Debug)]
pub struct ServerTxn {
    /// Our own id for linking.
    pub id: u64,
    /// Leg it arrived on.
    pub side: Side,
    /// Top Via branch.
    pub branch: String,
    /// Method.
    pub method: String,
    /// The request (responses are built from it).
    pub request: Message,
    /// Where responses go.
    pub flow: Flow,
    /// Final status sent, if any.
    pub final_code: Option<u16>,
    /// True once an INVITE's final response was ACKed.
    pub acked: bool,
    last: Option<Vec<u8>>,
    interval: Duration,
    next: Option<Instant>,
    deadline: Option<Instant>,
    done: bool,
}

impl ServerTxn {
    /// Starts tracking a received request.
    pub fn new(id: u64, side: Side, request: Message, flow: Flow) -> ServerTxn {
        ServerTxn {
            id,
            side,
            branch: request.branch().unwrap_or_default(),
            method: request.method(),
            request,
            flow,
            final_code: None,
            acked: false,
            last: None,
            interval: T1,
            next: None,
            deadline: None,
            done: false,
        }
    }

    /// Records a response that is being sent; returns its bytes.
    pub fn respond(&mut self, response: &Message, now: Instant) -> Vec<u8> {
        let bytes = response.to_bytes();
        let code = response.code();
        if self.final_code.is_some() {
            // A final response was already sent; never send another.
            return Vec::new();
        }
        self.last = Some(bytes.clone());
        if code >= 200 {
            self.final_code = Some(code);
            let udp = self.flow.proto == Proto::Udp;
            if self.method == "INVITE" {
                // Timer G (non-2xx) and the core's 2xx retransmission alike,
                // until ACK; timer H bounds it.
                self.next = udp.then_some(now + T1);
                self.deadline = Some(now + 64 * T1);
            } else {
                // Timer J absorbs request retransmissions.
                self.deadline = Some(now + if udp { 64 * T1 } else { Duration::ZERO });
            }
        }
        bytes
    }

    /// The last response sent, for a retransmitted request.
    pub fn last_response(&self) -> Option<&[u8]> {
        self.last.as_deref()
    }

    /// The INVITE's final response was ACKed: stop retransmitting (timer I).
    pub fn on_ack(&mut self, now: Instant) {
        self.acked = true;
        self.next = None;
        let udp = self.flow.proto == Proto::Udp;
        self.deadline = Some(now + if udp { T4 } else { Duration::ZERO });
    }

    /// The next instant at which `poll` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.next, self.deadline) {
            (Some(n), Some(d)) => Some(n.min(d)),
            (n, d) => n.or(d),
        }
    }

    /// Runs the timers due at `now`.
    pub fn poll(&mut self, now: Instant) -> Option<TimerAction> {
        if self.done {
            return None;
        }
        if let Some(d) = self.deadline {
            if now >= d {
                self.done = true;
                let unacked = self.method == "INVITE" && !self.acked;
                return unacked.then_some(TimerAction::TimedOut);
            }
        }
        match self.next {
            Some(n) if now >= n => {
                self.interval = (self.interval * 2).min(T2);
                self.next = Some(now + self.interval);
                self.last
                    .clone()
                    .map(|b| TimerAction::Retransmit(b, self.flow))
            }
            _ => None,
        }
    }

    /// True once the transaction may be forgotten.
    pub fn is_terminated(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite() -> Message {
        let mut m = Message::request("INVITE", "sip:1@h");
        m.push("Via", "SIP/2.0/UDP h;branch=z9hG4bKx");
        m.push("CSeq", "1 INVITE");
        m
    }

    fn flow(proto: Proto) -> Flow {
        Flow {
            addr: "127.0.0.1:5060".parse().unwrap(),
            proto,
        }
    }

    #[test]
    fn invite_client_retransmits_over_udp_and_times_out() {
        let t0 = Instant::now();
        let mut t = ClientTxn::new(Side::Callee, invite(), flow(Proto::Udp), t0);
        assert!(matches!(t.poll(t0 + T1), Some(TimerAction::Retransmit(..))));
        assert!(t.poll(t0 + T1).is_none());
        assert!(matches!(
            t.poll(t0 + T1 * 3),
            Some(TimerAction::Retransmit(..))
        ));
        assert!(matches!(t.poll(t0 + 64 * T1), Some(TimerAction::TimedOut)));
    }

    #[test]
    fn no_retransmission_over_tcp() {
        let t0 = Instant::now();
        let mut t = ClientTxn::new(Side::Callee, invite(), flow(Proto::Tcp), t0);
        assert!(t.poll(t0 + T1 * 2).is_none());
        assert_eq!(t.next_deadline(), t0 + 64 * T1);
    }

    #[test]
    fn provisional_stops_timer_a() {
        let t0 = Instant::now();
        let mut t = ClientTxn::new(Side::Callee, invite(), flow(Proto::Udp), t0);
        assert_eq!(t.on_response(180, t0), ResponseVerdict::Deliver);
        assert!(t.poll(t0 + T1 * 4).is_none());
        assert_eq!(t.on_response(486, t0), ResponseVerdict::Deliver);
        assert_eq!(t.on_response(486, t0), ResponseVerdict::Retransmission);
    }

    #[test]
    fn server_retransmits_final_until_ack() {
        let t0 = Instant::now();
        let mut s = ServerTxn::new(1, Side::Caller, invite(), flow(Proto::Udp));
        s.respond(&Message::response(486, "Busy Here"), t0);
        assert!(matches!(s.poll(t0 + T1), Some(TimerAction::Retransmit(..))));
        s.on_ack(t0 + T1);
        assert!(s.poll(t0 + T1 * 3).is_none());
        assert!(s.poll(t0 + T1 + T4).is_none());
        assert!(s.is_terminated());
    }
}
