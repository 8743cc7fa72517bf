//! Number normalisation: every way a number is written (SIP/tel URI,
//! `+49…`, `0049…`, `030…`, a local number, a PBX exit code, separators) is turned
//! into one canonical form before numbers are compared.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A number in canonical form: international (E.164), an internal extension, or
/// something that is not a phone number (e.g. `anonymous`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Number {
    /// International number: the digits after `+` (country code first).
    E164(String),
    /// An internal extension (short number) of the PBX.
    Extension(String),
    /// Not a phone number (a SIP user name, `anonymous`, empty); never matches a rule.
    Other(String),
}

impl Number {
    /// True for a number that names a party (international or extension).
    pub fn is_dialable(&self) -> bool {
        !matches!(self, Number::Other(_))
    }
}

impl Serialize for Number {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::E164(d) => write!(f, "+{d}"),
            Number::Extension(d) => write!(f, "ext:{d}"),
            Number::Other(s) => write!(f, "other:{s}"),
        }
    }
}

/// The local dialling plan used to normalise numbers (config section `[numbers]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NumberPlan {
    /// Country code without prefix, e.g. `49`.
    pub country_code: String,
    /// Area code without the national prefix, e.g. `30`; empty when local numbers are not used.
    pub area_code: String,
    /// Prefix for international numbers, e.g. `00`.
    pub international_prefix: String,
    /// Prefix for national numbers (trunk prefix), e.g. `0`.
    pub national_prefix: String,
    /// Digits the PBX's users dial for an outside line (e.g. `0`); stripped from
    /// numbers dialled on outgoing calls only. Empty when the PBX uses none.
    pub exit_code: String,
    /// Numbers with at most this many digits are internal extensions.
    pub max_extension_len: usize,
}

impl Default for NumberPlan {
    fn default() -> Self {
        NumberPlan {
            country_code: "49".into(),
            area_code: String::new(),
            international_prefix: "00".into(),
            national_prefix: "0".into(),
            exit_code: String::new(),
            max_extension_len: 4,
        }
    }
}

/// Where a number was seen: only numbers dialled by the PBX's users carry an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberRole {
    /// Any number that no PBX user dialled (callers, directory entries, incoming targets).
    Plain,
    /// A number dialled by a PBX user on an outgoing call (may start with the exit code).
    DialledOutgoing,
}

impl NumberPlan {
    /// Normalise `raw` (a number, a `sip:`/`tel:` URI or a name-addr) that is not an
    /// outgoing dialled number.
    pub fn normalise(&self, raw: &str) -> Number {
        self.normalise_as(raw, NumberRole::Plain)
    }

    /// Normalise a number the PBX lists as internal: all digits → an extension of
    /// any length; anything else is normalised as usual.
    pub fn normalise_internal(&self, raw: &str) -> Number {
        let cleaned: String = user_part(raw)
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '/' | '\t'))
            .collect();
        if is_digits(&cleaned) {
            Number::Extension(cleaned)
        } else {
            self.normalise(raw)
        }
    }

    /// Normalise `raw` seen in `role`.
    pub fn normalise_as(&self, raw: &str, role: NumberRole) -> Number {
        let user = user_part(raw);
        if let Some(ext) = user.strip_prefix("ext:") {
            if is_digits(ext) {
                return Number::Extension(ext.to_string());
            }
        }
        // "+49 (0)30 …": the national prefix in brackets is not dialled internationally.
        let user_no_trunk = user.replace("(0)", "");
        let cleaned: String = user_no_trunk
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '/' | '\t'))
            .collect();
        if cleaned.is_empty() {
            return Number::Other(user.to_string());
        }
        if let Some(rest) = cleaned.strip_prefix('+') {
            return if is_digits(rest) {
                Number::E164(rest.to_string())
            } else {
                Number::Other(cleaned)
            };
        }
        if !is_digits(&cleaned) {
            return Number::Other(cleaned);
        }
        let mut digits = cleaned.as_str();
        if role == NumberRole::DialledOutgoing
            && !self.exit_code.is_empty()
            && digits.len() > self.max_extension_len
        {
            if let Some(rest) = digits.strip_prefix(self.exit_code.as_str()) {
                digits = rest;
            }
        }
        if !self.international_prefix.is_empty() {
            if let Some(rest) = digits.strip_prefix(self.international_prefix.as_str()) {
                if !rest.is_empty() {
                    return Number::E164(rest.to_string());
                }
            }
        }
        if digits.len() <= self.max_extension_len {
            return Number::Extension(digits.to_string());
        }
        if !self.national_prefix.is_empty() {
            if let Some(rest) = digits.strip_prefix(self.national_prefix.as_str()) {
                return Number::E164(format!("{}{}", self.country_code, rest));
            }
        }
        Number::E164(format!("{}{}{}", self.country_code, self.area_code, digits))
    }
}

/// The user part of a URI or name-addr: `"Anna" <sip:+4930123@pbx;user=phone>` → `+4930123`.
fn user_part(raw: &str) -> &str {
    let mut s = raw.trim();
    if let (Some(open), Some(close)) = (s.find('<'), s.rfind('>')) {
        if open < close {
            s = &s[open + 1..close];
        }
    }
    for scheme in ["sips:", "sip:", "tel:"] {
        if s.len() >= scheme.len() && s[..scheme.len()].eq_ignore_ascii_case(scheme) {
            s = &s[scheme.len()..];
            break;
        }
    }
    if let Some(at) = s.find('@') {
        s = &s[..at];
    }
    if let Some(semi) = s.find(';') {
        s = &s[..semi];
    }
    if let Some(q) = s.find('?') {
        s = &s[..q];
    }
    s.trim()
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> NumberPlan {
        NumberPlan {
            area_code: "30".into(),
            exit_code: "0".into(),
            ..NumberPlan::default()
        }
    }

    #[test]
    fn four_spellings_are_equal() {
        let p = plan();
        let want = Number::E164("49301234567".into());
        for raw in [
            "+49301234567",
            "0049301234567",
            "0301234567",
            "1234567",
            "sip:+49 30 123-4567@pbx.example;user=phone",
            "\"Anna\" <tel:+49-30-1234567;phone-context=x>",
            "+49 (0)30 123 45 67",
        ] {
            assert_eq!(p.normalise(raw), want, "{raw}");
        }
        assert_eq!(
            p.normalise_as("00301234567", NumberRole::DialledOutgoing),
            want
        );
    }

    #[test]
    fn extensions_and_others() {
        let p = plan();
        assert_eq!(p.normalise("sip:201@pbx"), Number::Extension("201".into()));
        assert_eq!(
            p.normalise_as("201", NumberRole::DialledOutgoing),
            Number::Extension("201".into())
        );
        assert_eq!(
            p.normalise("sip:anonymous@x"),
            Number::Other("anonymous".into())
        );
        assert!(!p.normalise("").is_dialable());
        assert_eq!(p.normalise("ext:201"), Number::Extension("201".into()));
        assert_eq!(Number::Extension("201".into()).to_string(), "ext:201");
    }
}
