//! Sample formats shared by the media relay (announcements it plays) and the
//! recorder (files it writes): G.711 A-law and µ-law, and sample-rate conversion.

pub mod g711;
pub mod resample;

pub use g711::{encode_alaw, encode_ulaw, ALAW_TO_LINEAR, ULAW_TO_LINEAR};
