//! The words every layer uses about a call, defined once: which way the call
//! goes through the proxy, which side of it a leg, packet or channel belongs
//! to, and which sides a recording holds. The signalling (b2bua), the policy,
//! the media relay, the recorder and the metadata all use these types; their
//! serialized spellings (lower-case words in JSON, TOML, the database and on
//! the command line) are part of the formats and must not change.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which way a call goes through the proxy, relative to the PBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the trunk (or anyone but the PBX) to the PBX.
    Incoming,
    /// From the PBX to the trunk.
    Outgoing,
}

impl fmt::Display for Direction {
    /// The short form used in decision logs and file names: `in` or `out`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Incoming => "in",
            Direction::Outgoing => "out",
        })
    }
}

/// A side of a call. The caller is the side that sent the initial INVITE
/// (leg A); in a stereo recording it is the left channel. The recorder
/// knows a packet's side from where the relay received it, never from its SSRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Sent the initial INVITE (leg A).
    Caller,
    /// Received the initial INVITE from us (leg B).
    Callee,
}

impl Side {
    /// 0 for the caller, 1 for the callee.
    pub fn index(self) -> usize {
        match self {
            Side::Caller => 0,
            Side::Callee => 1,
        }
    }

    /// Inverse of `index`.
    pub fn from_index(i: usize) -> Side {
        if i == 0 {
            Side::Caller
        } else {
            Side::Callee
        }
    }

    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }

    /// Lower-case name for logs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Side::Caller => "caller",
            Side::Callee => "callee",
        }
    }
}

/// Which sides a recording holds and how they are laid out in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelMode {
    /// Caller only, mono `<base>.wav`.
    Caller,
    /// Callee only, mono `<base>.wav`.
    Callee,
    /// Both in `<base>.wav`: left = caller, right = callee.
    #[default]
    Stereo,
    /// Both as mono files `<base>_caller.wav` and `<base>_callee.wav`.
    Separate,
}

impl ChannelMode {
    /// Whether this mode records `side`.
    pub fn records(self, side: Side) -> bool {
        !matches!(
            (self, side),
            (ChannelMode::Caller, Side::Callee) | (ChannelMode::Callee, Side::Caller)
        )
    }
}

impl fmt::Display for ChannelMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelMode::Caller => "caller",
            ChannelMode::Callee => "callee",
            ChannelMode::Stereo => "stereo",
            ChannelMode::Separate => "separate",
        })
    }
}

/// A channel mode that is none of the four words.
#[derive(Debug, thiserror::Error)]
#[error("invalid channel mode {0:?}: expected caller, callee, stereo or separate")]
pub struct UnknownChannelMode(pub String);

impl FromStr for ChannelMode {
    type Err = UnknownChannelMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "caller" => Ok(ChannelMode::Caller),
            "callee" => Ok(ChannelMode::Callee),
            "stereo" => Ok(ChannelMode::Stereo),
            "separate" => Ok(ChannelMode::Separate),
            _ => Err(UnknownChannelMode(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_stay_as_the_formats_have_them() {
        for (d, json, short) in [
            (Direction::Incoming, "\"incoming\"", "in"),
            (Direction::Outgoing, "\"outgoing\"", "out"),
        ] {
            assert_eq!(serde_json::to_string(&d).unwrap(), json);
            assert_eq!(serde_json::from_str::<Direction>(json).unwrap(), d);
            assert_eq!(d.to_string(), short);
        }
        for s in [Side::Caller, Side::Callee] {
            let json = format!("\"{}\"", s.name());
            assert_eq!(serde_json::to_string(&s).unwrap(), json);
            assert_eq!(Side::from_index(s.index()), s);
            assert_eq!(s.other().other(), s);
        }
        for m in ["caller", "callee", "stereo", "separate"] {
            let mode: ChannelMode = m.parse().unwrap();
            assert_eq!(mode.to_string(), m);
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{m}\""));
        }
        assert!("both".parse::<ChannelMode>().is_err());
        assert!(!ChannelMode::Caller.records(Side::Callee));
        assert!(ChannelMode::Stereo.records(Side::Callee));
    }
}
