//! How the parts of a STARFACE phone number become one canonical number. The
//! REST API hands out `exitCode`, `nationalPrefix`, `localPrefix` and `number`
//! without saying what each holds, and installations differ: the exit code may be
//! the outside-line digit (`0`), the international prefix (`00`), `+` or empty; the
//! national prefix may be the trunk prefix digit (`0`) or the country code (`49`);
//! the local prefix (area code) may be there or already inside the number. The
//! configured number plan (`[numbers]`) settles what the API leaves open; parts that
//! still do not make a whole international number are refused, never guessed,
//! because a wrong number would record the wrong calls.

use super::numbers::{Number, NumberPlan};

/// The raw fields of one external number as the PBX lists them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NumberParts<'a> {
    /// `exitCode`: outside-line digit, international prefix, `+` or empty.
    pub exit_code: &'a str,
    /// `nationalPrefix`: trunk prefix digit or country code, or empty.
    pub national_prefix: &'a str,
    /// `localPrefix`: the area code, or empty.
    pub local_prefix: &'a str,
    /// `number`: the subscriber number (with or without the area code).
    pub number: &'a str,
}

impl std::fmt::Display for NumberParts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exitCode={:?} nationalPrefix={:?} localPrefix={:?} number={:?}",
            self.exit_code, self.national_prefix, self.local_prefix, self.number
        )
    }
}

/// Why the parts do not make a whole number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    /// A field holds something other than digits (or `+` where allowed).
    #[error("a field holds more than digits")]
    NotDigits,
    /// No number at all.
    #[error("the number is empty")]
    Empty,
    /// The exit code says international but no country code follows.
    #[error("the exit code announces an international number but no country code follows")]
    NoCountryCode,
    /// The national prefix is neither the plan's trunk prefix nor a country code.
    #[error("the national prefix is neither the trunk prefix of [numbers] nor a country code")]
    UnknownNationalPrefix,
    /// A bare number and no `area_code` in `[numbers]` to place it.
    #[error("a bare number without prefixes, and [numbers] has no area_code to place it")]
    NoAreaCode,
    /// Too few digits for a number outside the PBX, or more than E.164 allows.
    #[error("the digits do not make a whole international number")]
    BadLength,
}

/// Longest international number (E.164).
const E164_MAX_DIGITS: usize = 15;

/// Separators people type into number fields.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '/' | '\t'))
        .collect()
}

fn digits(s: &str) -> Result<String, AssembleError> {
    let s = clean(s);
    if s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s)
    } else {
        Err(AssembleError::NotDigits)
    }
}

/// `s` without a leading `prefix` (a no-op for an empty prefix).
fn strip<'s>(s: &'s str, prefix: &str) -> &'s str {
    if prefix.is_empty() {
        s
    } else {
        s.strip_prefix(prefix).unwrap_or(s)
    }
}

/// The parts of an external number as one international number.
pub fn assemble(parts: &NumberParts<'_>, plan: &NumberPlan) -> Result<Number, AssembleError> {
    let raw_number = clean(parts.number);
    if raw_number.is_empty() {
        return Err(AssembleError::Empty);
    }
    // A number written whole (`+49…`) needs none of the other fields.
    if let Some(rest) = raw_number.strip_prefix('+') {
        return e164(digits(rest)?, plan);
    }
    let number = digits(&raw_number)?;
    let exit = clean(parts.exit_code);
    // `+` or the plan's international prefix announce a country code; any other
    // digits are what users dial for an outside line and are not part of the number.
    let international =
        exit == "+" || (!plan.international_prefix.is_empty() && exit == plan.international_prefix);
    if !international && !exit.is_empty() {
        digits(&exit)?;
    }
    let national = clean(parts.national_prefix);
    let local = digits(parts.local_prefix)?;
    let country = if national.is_empty() {
        if international {
            return Err(AssembleError::NoCountryCode);
        }
        None
    } else if let Some(cc) = national.strip_prefix('+') {
        Some(digits(cc)?)
    } else {
        let national = digits(&national)?;
        if !plan.international_prefix.is_empty()
            && national.len() > plan.international_prefix.len()
            && national.starts_with(&plan.international_prefix)
        {
            Some(national[plan.international_prefix.len()..].to_string())
        } else if !plan.national_prefix.is_empty() && national == plan.national_prefix {
            // The trunk prefix: a national number of the plan's country follows.
            if international {
                return Err(AssembleError::NoCountryCode);
            }
            Some(plan.country_code.clone())
        } else if national.starts_with('0') {
            return Err(AssembleError::UnknownNationalPrefix);
        } else {
            Some(national)
        }
    };
    let significant = match (country.is_some(), local.is_empty()) {
        // Area code and subscriber number.
        (_, false) => format!("{}{number}", strip(&local, &plan.national_prefix)),
        // The area code is inside the number.
        (true, true) => strip(&number, &plan.national_prefix).to_string(),
        // A bare number: placed by the plan like a number dialled without prefixes.
        (false, true) => {
            // A direct-dial suffix alone says nothing about the number in front of it.
            if number.len() <= plan.max_extension_len {
                return Err(AssembleError::BadLength);
            }
            if let Some(rest) = number
                .strip_prefix(plan.international_prefix.as_str())
                .filter(|r| !plan.international_prefix.is_empty() && !r.is_empty())
            {
                return e164(rest.to_string(), plan);
            }
            match number.strip_prefix(plan.national_prefix.as_str()) {
                Some(rest) if !plan.national_prefix.is_empty() => rest.to_string(),
                _ if plan.area_code.is_empty() => return Err(AssembleError::NoAreaCode),
                _ => format!("{}{number}", plan.area_code),
            }
        }
    };
    if significant.len() <= plan.max_extension_len {
        return Err(AssembleError::BadLength);
    }
    let country = country.unwrap_or_else(|| plan.country_code.clone());
    e164(format!("{country}{significant}"), plan)
}

fn e164(digits: String, plan: &NumberPlan) -> Result<Number, AssembleError> {
    if digits.len() <= plan.max_extension_len || digits.len() > E164_MAX_DIGITS {
        return Err(AssembleError::BadLength);
    }
    Ok(Number::E164(digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> NumberPlan {
        NumberPlan {
            country_code: "49".into(),
            area_code: "30".into(),
            exit_code: "0".into(),
            ..NumberPlan::default()
        }
    }

    fn parts<'a>(
        exit: &'a str,
        national: &'a str,
        local: &'a str,
        number: &'a str,
    ) -> NumberParts<'a> {
        NumberParts {
            exit_code: exit,
            national_prefix: national,
            local_prefix: local,
            number,
        }
    }

    /// Every combination the spec allows: exit code `0`, `00`, `+`, empty; national
    /// prefix as trunk digit, as country code, empty; local prefix present or not.
    #[test]
    fn every_combination_gives_the_same_number_or_is_refused() {
        let want = Ok(Number::E164("493012345201".into()));
        let p = plan();
        for exit in ["0", "00", "+", ""] {
            let international = exit == "00" || exit == "+";
            for national in ["0", "49", ""] {
                for with_local in [true, false] {
                    let (local, number) = match (with_local, national.is_empty()) {
                        (true, _) => ("30", "12345201"),
                        // The area code inside the number.
                        (false, false) => ("", "3012345201"),
                        // No prefix at all: the plan's area code places it.
                        (false, true) => ("", "12345201"),
                    };
                    let got = assemble(&parts(exit, national, local, number), &p);
                    let expected = match national {
                        "" if international => Err(AssembleError::NoCountryCode),
                        "0" if international => Err(AssembleError::NoCountryCode),
                        _ => want.clone(),
                    };
                    assert_eq!(got, expected, "{}", parts(exit, national, local, number));
                }
            }
        }
    }

    #[test]
    fn other_spellings_of_the_parts() {
        let p = plan();
        let want = Ok(Number::E164("493012345201".into()));
        // Area code written with its trunk prefix, country code with `+` or `00`.
        assert_eq!(assemble(&parts("0", "49", "030", "12345201"), &p), want);
        assert_eq!(assemble(&parts("", "+49", "30", "12345201"), &p), want);
        assert_eq!(assemble(&parts("", "0049", "30", "12345201"), &p), want);
        assert_eq!(assemble(&parts("0", "", "", "+49 30 12345-201"), &p), want);
        assert_eq!(assemble(&parts("0", "", "", "030 12345201"), &p), want);
        assert_eq!(assemble(&parts("", "", "", "00493012345201"), &p), want);
        // Area code only in the local prefix: the plan's country.
        assert_eq!(assemble(&parts("0", "", "30", "12345201"), &p), want);
        // A foreign number keeps its own country code.
        assert_eq!(
            assemble(&parts("+", "43", "1", "5123456"), &p),
            Ok(Number::E164("4315123456".into()))
        );
    }

    #[test]
    fn what_cannot_be_normalised_is_refused() {
        let p = plan();
        let no_area = NumberPlan {
            area_code: String::new(),
            ..plan()
        };
        assert_eq!(
            assemble(&parts("0", "", "", "12345201"), &no_area),
            Err(AssembleError::NoAreaCode)
        );
        assert_eq!(
            assemble(&parts("0", "049", "30", "12345201"), &p),
            Err(AssembleError::UnknownNationalPrefix)
        );
        assert_eq!(
            assemble(&parts("+", "49", "30", "12x45"), &p),
            Err(AssembleError::NotDigits)
        );
        assert_eq!(
            assemble(&parts("#", "49", "30", "12345"), &p),
            Err(AssembleError::NotDigits)
        );
        assert_eq!(
            assemble(&parts("+", "49", "", ""), &p),
            Err(AssembleError::Empty)
        );
        // A direct-dial suffix alone is not a whole number.
        assert_eq!(
            assemble(&parts("0", "", "", "201"), &p),
            Err(AssembleError::BadLength)
        );
        assert_eq!(
            assemble(&parts("+", "49", "30", "1234567890123456"), &p),
            Err(AssembleError::BadLength)
        );
    }
}
