//! callrec: a SIP back-to-back user agent that records calls and seals the recordings.
//!
//! The modules follow the flow of a call (see README, "Architecture"):
//! `sip` (transport, messages, transactions) → `b2bua` (one task per call owning
//! both legs) → `media` (RTP relay, fork) → `recorder` (timeline, WAV, metadata)
//! → `seal` (checksums, signature, chain).

pub mod access_log;
pub mod admin;
pub mod admin_tls;
pub mod anchoring;
pub mod archive;
pub mod audio;
pub mod b2bua;
pub mod config;
pub mod console;
pub mod db;
pub mod db_repair;
pub mod hold;
pub mod http_serve;
pub mod instance;
pub mod media;
pub mod notify;
pub mod phone;
pub mod policy;
pub mod proxy;
pub mod reconcile;
pub mod recorder;
pub mod recovery;
pub mod redact;
pub mod seal;
pub mod sip;
pub mod spool;
pub mod storage;
pub mod transcribe;
pub mod vocab;
