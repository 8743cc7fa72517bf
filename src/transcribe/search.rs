//! Search by words: a transcript's text broken into its distinct words (lower
//! case; digit groups such as "1.000" kept whole as "1000"), and the sets whose
//! transcript holds every word of a query.

use std::collections::BTreeSet;

use crate::db::{Db, DbError};

/// The distinct words of `text`, lower case, in sorted order.
pub fn words(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = BTreeSet::new();
    let mut word = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let digit_sep = matches!(c, '.' | ',' | '\'')
            && i > 0
            && chars[i - 1].is_ascii_digit()
            && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if digit_sep {
            continue;
        }
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            out.insert(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.insert(word);
    }
    out.into_iter().collect()
}

/// Base names of the sets whose transcript holds every word of `query`
/// (none when the query has no word).
pub fn sets_with_words(db: &Db, query: &str) -> Result<BTreeSet<String>, DbError> {
    let wanted = words(query);
    if wanted.is_empty() {
        return Ok(BTreeSet::new());
    }
    db.read(|c| {
        let mut found: Option<BTreeSet<String>> = None;
        for w in &wanted {
            let sets: BTreeSet<String> = c
                .query(
                    "SELECT base_name FROM transcript_words WHERE word = ?1",
                    &[w],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect::<Result<_, _>>()?;
            let next = match found {
                None => sets,
                Some(f) => f.intersection(&sets).cloned().collect(),
            };
            if next.is_empty() {
                return Ok(next);
            }
            found = Some(next);
        }
        Ok(found.unwrap_or_default())
    })
}

#[cfg(test)]
mod tests {
    use super::super::queue::{Job, QueueChange};
    use super::*;

    #[test]
    fn words_are_lower_case_distinct_and_numbers_stay_whole() {
        assert_eq!(
            words("Guten Tag, ich möchte 1.000 Aktien der Bank kaufen. Aktien!"),
            vec!["1000", "aktien", "bank", "der", "guten", "ich", "kaufen", "möchte", "tag"]
        );
        assert_eq!(words("ISIN DE0005140008"), vec!["de0005140008", "isin"]);
        assert!(words(" ,. ").is_empty());
    }

    #[test]
    fn a_set_matches_only_when_it_has_every_word() {
        for engine in crate::db::scratch::ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let scratch = crate::db::scratch::ScratchDb::new(engine, dir.path());
            let db = scratch.open();
            let change = |c| {
                db.write_sync(vec![crate::db::Record::Transcript(c)])
                    .unwrap()
            };
            for (base, text) in [("a", "Ich kaufe Aktien"), ("b", "Ich verkaufe Anleihen")] {
                change(QueueChange::Queued(Job {
                    base_name: base.into(),
                    folder: dir.path().join(base),
                    profile: None,
                    language: "de".into(),
                    targets: vec!["file:///x".into()],
                    queued_ms: 1,
                }));
                change(QueueChange::Done {
                    base_name: base.into(),
                    checksum_sha256: "0".repeat(64),
                    words: words(text),
                    at_ms: 2,
                });
            }
            let hits = |q: &str| {
                sets_with_words(&db, q)
                    .unwrap()
                    .into_iter()
                    .collect::<Vec<_>>()
            };
            assert_eq!(hits("aktien"), vec!["a"]);
            assert_eq!(hits("ICH"), vec!["a", "b"]);
            assert_eq!(hits("ich Anleihen"), vec!["b"]);
            assert!(hits("Aktien Anleihen").is_empty());
            assert!(hits("").is_empty());
            assert_eq!(
                super::super::queue::addendum_checksum(&db, "a").unwrap(),
                Some("0".repeat(64))
            );
            change(QueueChange::Forget {
                base_name: "a".into(),
            });
            assert!(hits("aktien").is_empty());
            assert!(!super::super::queue::has_row(&db, "a").unwrap());
            assert!(super::super::queue::has_row(&db, "b").unwrap());
            assert_eq!(super::super::queue::rows(&db).unwrap().len(), 1);
            assert!(super::super::queue::pending(&db).unwrap().is_empty());
        }
    }
}
