//! The dynamic parts of target folders: `$Y $M $D $h $m $s`.

use chrono::{Datelike, NaiveDateTime, Timelike};

/// Replaces `$Y $M $D $h $m $s` in `template` with the year, month, day, hour,
/// minute and second of `start` (zero-padded); all other text is kept.
pub fn expand_template(template: &str, start: NaiveDateTime) -> String {
    let mut out = String::with_capacity(template.len() + 8);
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let part = match chars.peek() {
            Some('Y') => Some(format!("{:04}", start.year())),
            Some('M') => Some(format!("{:02}", start.month())),
            Some('D') => Some(format!("{:02}", start.day())),
            Some('h') => Some(format!("{:02}", start.hour())),
            Some('m') => Some(format!("{:02}", start.minute())),
            Some('s') => Some(format!("{:02}", start.second())),
            _ => None,
        };
        match part {
            Some(p) => {
                chars.next();
                out.push_str(&p);
            }
            None => out.push('$'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_is_replaced_and_static_text_kept() {
        let t = NaiveDateTime::parse_from_str("2026-03-01 07:05:09", "%Y-%m-%d %H:%M:%S").unwrap();
        assert_eq!(
            expand_template("rec/$Y/$M-$D/x$h$m$s/$X$", t),
            "rec/2026/03-01/x070509/$X$"
        );
    }
}
