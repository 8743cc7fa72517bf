//! SHA-256 of files and the `shasum -a 256` checksum-file format (write and parse).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use openssl::hash::{Hasher, MessageDigest};

/// One line of a checksum file: hex digest and file name relative to the set's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub sha256: String,
    pub name: String,
}

/// Streams `path` through SHA-256 (OpenSSL's, fast even in debug builds); returns lowercase hex.
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Hasher::new(MessageDigest::sha256()).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]).map_err(std::io::Error::other)?;
    }
    let digest = hasher.finish().map_err(std::io::Error::other)?;
    Ok(hex::encode(digest))
}

/// SHA-256 of a byte slice as lowercase hex.
pub(crate) fn sha256_bytes(bytes: &[u8]) -> String {
    // Hashing a slice in memory cannot fail short of an OpenSSL without SHA-256.
    let digest =
        openssl::hash::hash(MessageDigest::sha256(), bytes).expect("OpenSSL provides SHA-256");
    hex::encode(digest)
}

/// Whether `name` can stand in a checksum line unescaped (shasum escapes `\` and newlines).
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['\n', '\r', '\\'])
}

/// Renders entries exactly as `shasum -a 256` prints them: `<hex>  <name>\n`.
pub(crate) fn render(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| format!("{}  {}\n", e.sha256, e.name))
        .collect()
}

/// Parses a checksum file; returns entries or, per bad line, its 1-based number and what is wrong.
pub(crate) fn parse(text: &str) -> (Vec<Entry>, Vec<(usize, String)>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            errors.push((i + 1, "empty line".to_string()));
            continue;
        }
        let parsed = line.split_once(' ').and_then(|(hash, rest)| {
            // Text mode has a second space, binary mode a '*'.
            let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
            let ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
            ok.then(|| Entry {
                sha256: hash.to_ascii_lowercase(),
                name: name.to_string(),
            })
        });
        match parsed {
            Some(e) if is_plain_name(&e.name) => entries.push(e),
            _ => errors.push((
                i + 1,
                format!("malformed line {line:?} (expected \"<64 hex>  <file name>\")"),
            )),
        }
    }
    if !text.is_empty() && !text.ends_with('\n') {
        errors.push((
            text.lines().count(),
            "last line lacks its newline".to_string(),
        ));
    }
    (entries, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_then_parse_round_trips() {
        let entries = vec![
            Entry {
                sha256: "a".repeat(64),
                name: "x.json".into(),
            },
            Entry {
                sha256: "b".repeat(64),
                name: "x y.wav".into(),
            },
        ];
        let text = render(&entries);
        assert_eq!(
            text,
            format!("{}  x.json\n{}  x y.wav\n", "a".repeat(64), "b".repeat(64))
        );
        let (parsed, errors) = parse(&text);
        assert_eq!(parsed, entries);
        assert!(errors.is_empty());
    }

    #[test]
    fn parse_reports_bad_lines() {
        let text = format!(
            "{}  ok.wav\nnot a line\n{}  short\n",
            "c".repeat(64),
            "d".repeat(10)
        );
        let (parsed, errors) = parse(&text);
        assert_eq!(parsed.len(), 1);
        assert_eq!(errors.iter().map(|e| e.0).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn sha256_of_empty_input_is_the_known_value() {
        assert_eq!(
            sha256_bytes(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
