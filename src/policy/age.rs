//! Ages and periods as the config file and the command line write them
//! (`5y`, `90d`, `12h`): retention periods, `--older-than`.

use std::time::Duration;

/// A text that is not an age.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read {0:?} as an age; use a number and a unit: 5y, 90d, 12h, 30m")]
pub struct AgeError(pub String);

/// Reads an age such as `5y`, `7y`, `90d`, `12h`, `30m`, `45s` (a year is 365.25 days).
pub fn parse_age(s: &str) -> Result<Duration, AgeError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| AgeError(s.to_string()))?;
    let secs = match unit {
        "y" => 365 * 86_400 + 86_400 / 4,
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(AgeError(s.to_string())),
    };
    Ok(Duration::from_secs(n * secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("90d").unwrap(), Duration::from_secs(90 * 86_400));
        assert!(parse_age("5y").unwrap() > Duration::from_secs(5 * 365 * 86_400));
        assert!(parse_age("5 years").is_err());
        assert!(parse_age("y").is_err());
    }
}
