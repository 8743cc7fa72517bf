//! Registration-based trunks: the PBX registers its line with the carrier
//! through callrec. Each REGISTER from the PBX goes to the trunk with callrec's
//! Via and with every Contact replaced by a callrec URI whose user part is a
//! token for that binding, so that the carrier sends its INVITEs to callrec;
//! the Request-URI and the Authorization headers stay as they are (the digest
//! covers the Request-URI), and challenges (401/407) go back unchanged apart
//! from the Via. Bindings live in this one task; the router reads a snapshot
//! to map an INVITE for a token to the PBX's registered Contact, and never
//! waits on this task. While a binding exists the flow to the trunk is kept
//! alive with CRLF keep-alives (RFC 5626), so the carrier can reach callrec
//! through NAT and over the connection callrec opened.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{Core, Direction};
use crate::sip::header_value::{uri_of, uri_user};
use crate::sip::message::Message;
use crate::sip::{new_branch, random_token, Flow};

/// How often the flow to the trunk is refreshed while a binding exists.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(25);
/// A relayed REGISTER the trunk has not answered within this is forgotten
/// (the transaction timeout of RFC 3261, 64 × T1).
const PENDING_FOR: Duration = Duration::from_secs(32);
/// REGISTER messages waiting for the relay; more are dropped (the PBX
/// retransmits or retries), so the router never waits.
const QUEUE: usize = 256;
/// REGISTERs relayed and not yet answered; beyond this new ones are dropped
/// (a PBX registers a handful of lines, not thousands at once).
const MAX_PENDING: usize = 1024;

/// The PBX's registered Contact URIs by callrec token.
pub type Bindings = HashMap<String, String>;

/// The router's handle on the relay.
pub struct Relay {
    tx: mpsc::Sender<(Message, Flow)>,
    bindings: watch::Receiver<Arc<Bindings>>,
}

impl Relay {
    /// Starts the relay task.
    pub fn spawn(core: Arc<Core>) -> Relay {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (btx, bindings) = watch::channel(Arc::new(Bindings::new()));
        tokio::spawn(run(core, rx, btx));
        Relay { tx, bindings }
    }

    /// Hands a REGISTER from the PBX, or a response to one from the trunk,
    /// to the relay without waiting.
    pub fn offer(&self, msg: Message, flow: Flow) {
        if self.tx.try_send((msg, flow)).is_err() {
            debug!(peer = %flow.addr, "REGISTER relay busy: message dropped");
        }
    }

    /// The PBX Contact registered under the user part of `ruri`, if that is
    /// one of callrec's binding tokens.
    pub fn target(&self, ruri: &str) -> Option<String> {
        let user = uri_user(ruri)?;
        self.bindings.borrow().get(user).cloned()
    }
}

#[derive(Clone)]
struct Pending {
    pbx: Flow,
    vias: Vec<String>,
    /// Token → the PBX's Contact URI, for the Contacts of this REGISTER.
    contacts: Vec<(String, String)>,
    since: Instant,
}

struct State {
    core: Arc<Core>,
    pending: HashMap<String, Pending>,
    /// Token per PBX Contact URI, stable across refreshes.
    tokens: HashMap<String, String>,
    /// Token → (PBX Contact URI, expiry).
    bound: HashMap<String, (String, Instant)>,
    publish: watch::Sender<Arc<Bindings>>,
}

async fn run(
    core: Arc<Core>,
    mut rx: mpsc::Receiver<(Message, Flow)>,
    publish: watch::Sender<Arc<Bindings>>,
) {
    let mut s = State {
        core,
        pending: HashMap::new(),
        tokens: HashMap::new(),
        bound: HashMap::new(),
        publish,
    };
    let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some((msg, flow)) if msg.is_request() => s.request(msg, flow).await,
                Some((msg, _)) => s.response(msg).await,
                None => return,
            },
            _ = tick.tick() => s.housekeeping().await,
        }
    }
}

/// The `expires` parameter of a Contact value.
fn expires_param(contact: &str) -> Option<u64> {
    let params = contact.rsplit_once('>').map(|(_, p)| p).unwrap_or("");
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("expires")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

/// `contact` with its URI replaced by `uri` (parameters after the URI kept).
fn with_uri(contact: &str, uri: &str) -> String {
    match contact.rsplit_once('>') {
        Some((_, params)) => format!("<{uri}>{params}"),
        None => {
            let params = contact.split_once(';').map(|(_, p)| p);
            match params {
                Some(p) => format!("<{uri}>;{p}"),
                None => format!("<{uri}>"),
            }
        }
    }
}

impl State {
    fn trunk(&self) -> Flow {
        self.core.next_hop(Direction::Outgoing)
    }

    async fn request(&mut self, msg: Message, pbx: Flow) {
        if self.pending.len() >= MAX_PENDING {
            warn!(peer = %pbx.addr, "{MAX_PENDING} REGISTERs await the trunk's answer: this one is dropped");
            return;
        }
        let trunk = self.trunk();
        let mut out = msg.clone();
        let vias: Vec<String> = msg
            .headers
            .iter()
            .filter(|h| h.name == "Via")
            .map(|h| h.value.clone())
            .collect();
        out.remove("Via");
        out.remove("Route");
        let branch = new_branch();
        out.headers.insert(
            0,
            crate::sip::message::Header {
                name: "Via".into(),
                value: self.core.via(trunk.proto, &branch),
            },
        );
        let ours = uri_of(&self.core.contact(trunk.proto)).to_string();
        let (_, host) = ours.split_once('@').unwrap_or(("", &ours));
        let mut contacts = Vec::new();
        let mut rewritten = Vec::new();
        for c in msg.header_all("Contact") {
            if c.trim() == "*" {
                rewritten.push(c.to_string());
                continue;
            }
            let pbx_uri = uri_of(c).to_string();
            let token = self
                .tokens
                .entry(pbx_uri.clone())
                .or_insert_with(|| format!("rr{}", random_token(16)))
                .clone();
            rewritten.push(with_uri(c, &format!("sip:{token}@{host}")));
            contacts.push((token, pbx_uri));
        }
        out.remove("Contact");
        for c in rewritten {
            out.push("Contact", c);
        }
        info!(peer = %pbx.addr, aor = %uri_of(msg.header("To").unwrap_or_default()), "REGISTER relayed to the trunk");
        self.pending.insert(
            branch,
            Pending {
                pbx,
                vias,
                contacts,
                since: Instant::now(),
            },
        );
        if let Err(e) = self.core.transport.send(trunk, out.to_bytes()).await {
            warn!(peer = %trunk.addr, "cannot relay REGISTER to the trunk: {e}");
        }
    }

    async fn response(&mut self, msg: Message) {
        let Some(branch) = msg.branch() else { return };
        let code = msg.code();
        let final_response = code >= 200;
        let Some(p) = (if final_response {
            self.pending.remove(&branch)
        } else {
            self.pending.get(&branch).cloned()
        }) else {
            debug!("response to an unknown REGISTER dropped");
            return;
        };
        let mut back = msg.clone();
        back.remove("Via");
        for (i, v) in p.vias.iter().enumerate() {
            back.headers.insert(
                i,
                crate::sip::message::Header {
                    name: "Via".into(),
                    value: v.clone(),
                },
            );
        }
        if (200..300).contains(&code) {
            self.bind(&mut back, &msg, &p);
        } else if final_response {
            info!(
                code,
                "the trunk answered REGISTER with {code}; passed on to the PBX"
            );
        }
        if let Err(e) = self.core.transport.send(p.pbx, back.to_bytes()).await {
            warn!(peer = %p.pbx.addr, "cannot pass the REGISTER response to the PBX: {e}");
        }
    }

    /// Records the bindings a 2xx confirms and gives the PBX its own Contacts back.
    fn bind(&mut self, back: &mut Message, msg: &Message, p: &Pending) {
        let default_expiry: u64 = msg
            .header("Expires")
            .and_then(|e| e.trim().parse().ok())
            .unwrap_or(3600);
        for (token, _) in &p.contacts {
            self.bound.remove(token);
        }
        let mut contacts = Vec::new();
        for c in msg.header_all("Contact") {
            let uri = uri_of(c);
            let token = uri_user(uri).unwrap_or_default();
            match p.contacts.iter().find(|(t, _)| t == token) {
                Some((t, pbx_uri)) => {
                    let secs = expires_param(c).unwrap_or(default_expiry);
                    if secs > 0 {
                        let until = Instant::now() + Duration::from_secs(secs);
                        self.bound.insert(t.clone(), (pbx_uri.clone(), until));
                        info!(contact = %pbx_uri, expires = secs, "PBX registered with the trunk");
                    }
                    contacts.push(with_uri(c, pbx_uri));
                }
                // Another binding of the same line (e.g. a second PBX): as the trunk lists it.
                None => contacts.push(c.to_string()),
            }
        }
        back.remove("Contact");
        for c in contacts {
            back.push("Contact", c);
        }
        self.publish_bindings();
    }

    fn publish_bindings(&self) {
        let now = Instant::now();
        let b: Bindings = self
            .bound
            .iter()
            .filter(|(_, (_, until))| *until > now)
            .map(|(t, (uri, _))| (t.clone(), uri.clone()))
            .collect();
        self.publish.send_replace(Arc::new(b));
    }

    async fn housekeeping(&mut self) {
        let now = Instant::now();
        self.pending.retain(|_, p| now - p.since < PENDING_FOR);
        let before = self.bound.len();
        self.bound.retain(|_, (_, until)| *until > now);
        if self.bound.len() != before {
            self.publish_bindings();
        }
        if self.bound.is_empty() {
            return;
        }
        // A double CRLF: on a stream the RFC 5626 ping (the trunk answers
        // with one CRLF), on UDP a datagram that keeps NAT bindings open.
        let trunk = self.trunk();
        if let Err(e) = self.core.transport.send(trunk, b"\r\n\r\n".to_vec()).await {
            debug!(peer = %trunk.addr, "keep-alive to the trunk not sent: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_uri_swapped_params_kept() {
        assert_eq!(
            with_uri("<sip:100@10.0.0.2:5060>;expires=600", "sip:rrX@1.2.3.4"),
            "<sip:rrX@1.2.3.4>;expires=600"
        );
        assert_eq!(
            with_uri("sip:100@10.0.0.2;expires=60", "sip:rrX@h"),
            "<sip:rrX@h>;expires=60"
        );
        assert_eq!(expires_param("<sip:a@b>;q=1;expires=600"), Some(600));
        assert_eq!(expires_param("<sip:a@b;expires=9>"), None);
    }
}
