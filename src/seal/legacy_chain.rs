//! The chain check for sets of the older format, which link to the previous
//! set by base name (one chain per instance): gaps, altered sets, forks,
//! several starts and cycles, by name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::chain::ChainLink;
use super::verify::Problem;
use super::CHECKSUM_SUFFIX;

/// A set as seen by the chain check.
pub(super) struct Node {
    pub id: String,
    pub json: PathBuf,
    pub instance: String,
    pub previous: Option<ChainLink>,
    pub sums_sha256: String,
}

/// Checks the previous links of all nodes, per instance.
pub(super) fn check_links(nodes: &[Node], dir: &Path) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut groups: BTreeMap<&str, Vec<&Node>> = BTreeMap::new();
    for n in nodes {
        groups.entry(&n.instance).or_default().push(n);
    }
    for (instance, group) in groups {
        let mut by_id: HashMap<&str, &Node> = HashMap::new();
        for n in &group {
            if let Some(other) = by_id.insert(&n.id, n) {
                problems.push(Problem::new(
                    &n.json,
                    format!("set {} appears twice (also {})", n.id, other.json.display()),
                ));
            }
        }
        let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut starts = Vec::new();
        let mut roots = Vec::new();
        for n in &group {
            let Some(link) = &n.previous else {
                roots.push(n.id.as_str());
                starts.push(n.id.as_str());
                continue;
            };
            if link.id == n.id {
                problems.push(Problem::new(
                    &n.json,
                    "out of order: \"previous\" names the set itself",
                ));
                starts.push(n.id.as_str());
                continue;
            }
            let expected = format!("{}{CHECKSUM_SUFFIX}", link.id);
            if link.checksum_file.as_deref() != Some(expected.as_str()) {
                problems.push(Problem::new(
                    &n.json,
                    format!(
                        "\"previous\" names checksum file {} for set {}",
                        link.checksum_file.as_deref().unwrap_or("(none)"),
                        link.id
                    ),
                ));
            }
            match by_id.get(link.id.as_str()) {
                None => {
                    problems.push(Problem::new(
                        &n.json,
                        format!(
                            "gap in the chain: previous set {} is missing below {} (deleted, or not copied); the chain continues with {}",
                            link.id,
                            dir.display(),
                            n.id
                        ),
                    ));
                    starts.push(n.id.as_str());
                }
                Some(prev) => {
                    if prev.sums_sha256 != link.sha256.to_ascii_lowercase() {
                        problems.push(Problem::new(
                            &n.json,
                            format!(
                                "previous set {} was altered or replaced: {} has SHA-256 {}, the chain recorded {}",
                                link.id, expected, prev.sums_sha256, link.sha256
                            ),
                        ));
                    }
                    children.entry(&prev.id).or_default().push(&n.id);
                }
            }
        }
        let who = if instance.is_empty() {
            String::new()
        } else {
            format!(" of instance {instance}")
        };
        if roots.len() > 1 {
            roots.sort_unstable();
            problems.push(Problem::new(
                dir,
                format!(
                    "out of order: several sets start the chain{who} (\"previous\": null): {} (chain head lost or data dir reset)",
                    roots.join(", ")
                ),
            ));
        }
        for (parent, kids) in &children {
            if kids.len() > 1 {
                let mut kids = kids.clone();
                kids.sort_unstable();
                problems.push(Problem::new(
                    &by_id[parent].json,
                    format!(
                        "out of order: fork, set {parent} is named as previous by {} (chain head restored from an old state?)",
                        kids.join(", ")
                    ),
                ));
            }
        }
        // Whatever cannot be reached from a start lies on a cycle of links.
        let mut seen: HashSet<&str> = HashSet::new();
        let mut stack = starts;
        while let Some(id) = stack.pop() {
            if seen.insert(id) {
                stack.extend(children.get(id).into_iter().flatten().copied());
            }
        }
        let mut cyclic: Vec<&&Node> = group
            .iter()
            .filter(|n| !seen.contains(n.id.as_str()))
            .collect();
        cyclic.sort_by(|a, b| a.id.cmp(&b.id));
        for n in cyclic {
            problems.push(Problem::new(
                &n.json,
                "out of order: the set lies on a cycle of \"previous\" links",
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node whose previous is `prev` (with the hash that `prev`'s node carries).
    fn node(id: &str, prev: Option<&str>) -> Node {
        Node {
            id: id.into(),
            json: PathBuf::from(format!("{id}.json")),
            instance: "i1".into(),
            previous: prev.map(|p| ChainLink {
                id: p.into(),
                checksum_file: Some(format!("{p}.sha256")),
                sha256: format!("hash-{p}"),
                seq: None,
            }),
            sums_sha256: format!("hash-{id}"),
        }
    }

    #[test]
    fn intact_chain_has_no_problems() {
        let nodes = [node("a", None), node("b", Some("a")), node("c", Some("b"))];
        assert_eq!(check_links(&nodes, Path::new("d")), vec![]);
    }

    #[test]
    fn cycle_and_second_start_are_out_of_order() {
        let nodes = [
            node("a", None),
            node("x", Some("y")),
            node("y", Some("x")),
            node("z", None),
        ];
        let problems = check_links(&nodes, Path::new("d"));
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|p| p.starts_with("x.json") && p.contains("cycle")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|p| p.starts_with("y.json") && p.contains("cycle")),
            "{text:?}"
        );
        assert!(
            text.iter().any(
                |p| p.contains("several sets start the chain of instance i1")
                    && p.contains(": a, z (")
            ),
            "{text:?}"
        );
        assert_eq!(problems.len(), 3, "{text:?}");
    }

    #[test]
    fn instances_have_separate_chains() {
        let mut other = node("o", None);
        other.instance = "i2".into();
        let nodes = [node("a", None), node("b", Some("a")), other];
        assert_eq!(check_links(&nodes, Path::new("d")), vec![]);
    }
}
