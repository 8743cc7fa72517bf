//! The deployment files of `deploy/`, checked
//! without installing them:
//!
//! - `callrec.service`: has the hardening and settings the project promises
//!   (own user, state directory as --data-dir, ProtectSystem=strict, only
//!   CAP_NET_BIND_SERVICE, address families, system call filter, environment
//!   file, SIGTERM with a stop timeout, restart on failure but not after
//!   exit status 2, a setup error such as a damaged database); a copy whose
//!   ExecStart names the built binary passes `systemd-analyze verify` without
//!   a single warning, and `systemd-analyze security --offline=yes` rates its
//!   exposure at most 2.0 (of 10).
//! - `callrec.env.example`: every CALLREC_* variable it names, set or
//!   commented out, is one that `callrec run` reads (its --help lists it).
//! - `Containerfile`: no container engine runs here, so only its structure:
//!   a Rust build stage and a debian:bookworm-slim runtime stage with
//!   ca-certificates and openssl, a non-root USER, the SIP and admin ports
//!   exposed, the state volume, `callrec run` as the entry point, every
//!   COPY source present in the repository, and ENV names callrec knows.
//!   Its packages: the build and runtime stages install exactly the lists
//!   `deploy/test.sh` keeps (`build_packages`, `runtime_packages`), and every
//!   shared library the built binary loads (ldd, then dpkg -S) belongs to a
//!   runtime package, one of their dependencies (apt-cache) or the base image.
//!
//! `systemd-analyze` comes from the Debian package systemd, which
//! `deploy/test.sh` installs when it is missing.
//!
//! Over 600 lines: it parses three file formats (systemd unit, env file,
//! Containerfile) just far enough to check them, and keeps the parsers beside
//! the checks.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

fn deploy_file(name: &str) -> String {
    let path = repo_dir().join("deploy").join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `callrec run --help`, for the names of the environment variables it reads.
fn run_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_callrec"))
        .args(["run", "--help"])
        .output()
        .expect("run callrec run --help");
    assert!(out.status.success(), "callrec run --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `callrec run` reads the environment variable `name`: listed as
/// `[env: NAME=` by --help, or named in a flag's help text (the keystore
/// password value, which has no flag of its own).
fn callrec_reads(help: &str, name: &str) -> bool {
    help.contains(&format!("[env: {name}="))
        || help
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == name)
}

/// The CALLREC_* words in `text`.
fn callrec_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("CALLREC_") && w.len() > "CALLREC_".len())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

// ---------------------------------------------------------------------------
// systemd unit
// ---------------------------------------------------------------------------

/// A unit file as section → key → values (a key may repeat). Panics on a
/// line that is neither a comment, a section header nor `key=value`.
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section: Option<String> = None;
    let mut pending = String::new();
    for (no, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        // continuation lines end in a backslash
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        let full = format!("{pending}{line}");
        pending.clear();
        if let Some(name) = full.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = Some(name.to_string());
            continue;
        }
        let (k, v) = full
            .split_once('=')
            .unwrap_or_else(|| panic!("callrec.service line {}: not key=value: {raw:?}", no + 1));
        let s = section
            .clone()
            .unwrap_or_else(|| panic!("callrec.service line {}: key outside a section", no + 1));
        out.entry(s)
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

fn require_systemd_analyze() -> PathBuf {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "systemd-analyze (Debian package systemd) is not installed: run ./deploy/test.sh, \
                 which installs the test peers and then runs the tests"
            )
        })
}

#[test]
fn deploy_systemd_unit_has_the_promised_settings() {
    let text = deploy_file("callrec.service");
    let unit = parse_unit(&text);
    let service = unit.get("Service").expect("[Service] section");
    let one = |k: &str| -> String {
        let v = service
            .get(k)
            .unwrap_or_else(|| panic!("[Service] has no {k}="));
        v.last().cloned().unwrap_or_default()
    };
    for (k, want) in [
        ("User", "callrec"),
        ("Group", "callrec"),
        ("DynamicUser", "no"),
        ("StateDirectory", "callrec"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("EnvironmentFile", "-/etc/callrec/callrec.env"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        // Exit status 2 is a setup error (a damaged database, a bad config)
        // that a restart cannot cure: systemd must not loop on it.
        ("RestartPreventExitStatus", "2"),
    ] {
        assert_eq!(one(k), want, "[Service] {k}=");
    }
    assert!(
        service["SystemCallFilter"]
            .iter()
            .any(|v| v == "@system-service"),
        "SystemCallFilter=@system-service missing: {:?}",
        service["SystemCallFilter"]
    );
    let stop = one("TimeoutStopSec");
    assert!(
        stop.trim_end_matches('s')
            .parse::<u32>()
            .is_ok_and(|s| s >= 30),
        "TimeoutStopSec={stop}: should leave running calls time to finish"
    );
    let exec = one("ExecStart");
    assert!(
        exec.starts_with("/usr/local/bin/callrec run ")
            && exec.contains("--data-dir /var/lib/callrec"),
        "ExecStart should run `callrec run` on the state directory: {exec}"
    );
    assert_eq!(
        unit.get("Install").and_then(|s| s.get("WantedBy")),
        Some(&vec!["multi-user.target".to_string()])
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with('#') && l.contains("useradd") && l.contains("callrec")),
        "the header should show the useradd line for the callrec user"
    );
}

#[test]
fn deploy_systemd_unit_passes_systemd_analyze() {
    let analyze = require_systemd_analyze();
    let dir = TestDir::new("unit");
    let bin = env!("CARGO_BIN_EXE_callrec");
    let text = deploy_file("callrec.service");
    assert!(text.contains("ExecStart=/usr/local/bin/callrec "));
    let copy = dir.join("callrec.service");
    fs::write(
        &copy,
        text.replace(
            "ExecStart=/usr/local/bin/callrec ",
            &format!("ExecStart={bin} "),
        ),
    )
    .expect("write unit copy");

    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&copy)
        .current_dir(dir.path())
        .output()
        .expect("run systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_unit: Vec<&str> = said.lines().filter(|l| l.contains("callrec")).collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify {} (exit {:?}):\n{said}",
        copy.display(),
        out.status.code()
    );

    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&copy)
        .current_dir(dir.path())
        .output()
        .expect("run systemd-analyze security");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for"))
        .and_then(|(_, rest)| rest.split(':').nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in systemd-analyze security output:\n{report}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("systemd-analyze security: exposure {exposure}");
    assert!(
        exposure <= 2.0,
        "the unit's exposure level {exposure} is above 2.0:\n{report}"
    );
}

#[test]
fn deploy_env_example_names_only_settings_callrec_reads() {
    let help = run_help();
    let text = deploy_file("callrec.env.example");
    let names = callrec_names(&text);
    for required in ["CALLREC_PBX", "CALLREC_TRUNK"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{required}="))),
            "callrec.env.example should set {required} (a required flag)"
        );
    }
    let unknown: Vec<&String> = names.iter().filter(|n| !callrec_reads(&help, n)).collect();
    assert!(
        unknown.is_empty(),
        "callrec.env.example names settings `callrec run` does not read: {unknown:?}\n{help}"
    );
    // Every non-comment line is VARIABLE=value.
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, _) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not VARIABLE=value: {line:?}"));
        assert!(k.starts_with("CALLREC_"), "unexpected variable: {line:?}");
    }
}

// ---------------------------------------------------------------------------
// Containerfile
// ---------------------------------------------------------------------------

/// (instruction, arguments) per instruction, continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if cur.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if line.starts_with('#') {
            continue; // comment inside a continued instruction
        }
        if let Some(head) = line.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(line);
        let (ins, args) = cur.split_once(char::is_whitespace).unwrap_or((&cur, ""));
        out.push((ins.to_ascii_uppercase(), args.trim().to_string()));
        cur.clear();
    }
    out
}

#[test]
fn deploy_containerfile_structure() {
    let text = deploy_file("Containerfile");
    assert!(
        text.lines()
            .take_while(|l| l.starts_with('#') || l.trim().is_empty())
            .any(|l| l.contains("no container engine")),
        "the header should say that the file is not built here"
    );
    let ins = instructions(&text);
    let froms: Vec<(usize, &String)> = ins
        .iter()
        .enumerate()
        .filter(|(_, (i, _))| i == "FROM")
        .map(|(n, (_, a))| (n, a))
        .collect();
    assert_eq!(froms.len(), 2, "two stages expected: {froms:?}");
    let build = froms[0].1.to_ascii_lowercase();
    assert!(
        build.contains("rust:") && build.contains("bookworm") && build.ends_with(" as build"),
        "first stage: a bookworm Rust image named build: {build}"
    );
    assert!(
        froms[1].1.ends_with("debian:bookworm-slim"),
        "runtime stage: debian:bookworm-slim, not {}",
        froms[1].1
    );
    let build_stage = &ins[froms[0].0..froms[1].0];
    let runtime = &ins[froms[1].0..];
    let all = |stage: &[(String, String)], name: &str| -> Vec<String> {
        stage
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.clone())
            .collect()
    };

    assert!(
        all(build_stage, "RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked")),
        "the build stage should run cargo build --release --locked"
    );
    let runs = all(runtime, "RUN").join(" ");
    for pkg in ["ca-certificates", "openssl"] {
        assert!(
            runs.contains(pkg),
            "runtime stage should install {pkg}: {runs}"
        );
    }
    assert!(
        runs.contains("useradd"),
        "runtime stage should create a user"
    );

    let users = all(runtime, "USER");
    let user = users.last().expect("runtime stage sets USER");
    let name = user.split(':').next().unwrap_or_default();
    assert!(
        !name.is_empty() && name != "root" && name != "0",
        "USER should not be root: {user}"
    );

    let exposed: Vec<String> = all(runtime, "EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    for port in ["5060/udp", "5060/tcp"] {
        assert!(
            exposed.iter().any(|e| e == port),
            "EXPOSE {port}: {exposed:?}"
        );
    }
    assert!(
        exposed.iter().any(|e| e == "8080" || e == "8080/tcp"),
        "EXPOSE 8080: {exposed:?}"
    );
    assert!(
        all(runtime, "VOLUME")
            .iter()
            .any(|v| v.contains("/var/lib/callrec")),
        "VOLUME /var/lib/callrec"
    );
    let entry = all(runtime, "ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry.last().expect("ENTRYPOINT"))
        .expect("ENTRYPOINT in exec (JSON) form");
    assert_eq!(entry.len(), 2, "ENTRYPOINT: {entry:?}");
    assert!(
        entry[0].ends_with("/callrec") && entry[1] == "run",
        "ENTRYPOINT: {entry:?}"
    );

    // COPY sources (from the build context) exist in the repository.
    for (i, args) in &ins {
        if i != "COPY" || args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args
            .split_whitespace()
            .filter(|p| !p.starts_with("--"))
            .collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                repo_dir().join(src).exists(),
                "COPY source {src} does not exist in the repository"
            );
        }
    }
    // Every file the build embeds (include_str!/include_bytes!) is copied into
    // the build stage, or `cargo build` there fails.
    let copied: Vec<String> = build_stage
        .iter()
        .filter(|(i, a)| i == "COPY" && !a.starts_with("--from"))
        .flat_map(|(_, a)| {
            let parts: Vec<String> = a.split_whitespace().map(str::to_string).collect();
            parts[..parts.len() - 1].to_vec()
        })
        .collect();
    for (file, embedded) in embedded_files(&repo_dir().join("src")) {
        let rel = embedded.strip_prefix(repo_dir()).unwrap_or_else(|_| {
            panic!(
                "{} embeds {} outside the repository",
                file.display(),
                embedded.display()
            )
        });
        assert!(
            copied
                .iter()
                .any(|c| rel.starts_with(c.trim_end_matches('/'))),
            "{} embeds {}, which the build stage does not COPY ({copied:?})",
            file.display(),
            rel.display()
        );
    }
    // The binary the runtime stage takes from the build stage is the one built.
    assert!(
        all(runtime, "COPY")
            .iter()
            .any(|c| c.starts_with("--from=build ") && c.contains("callrec")),
        "runtime stage copies callrec from the build stage"
    );

    let help = run_help();
    let env: Vec<String> = all(runtime, "ENV")
        .iter()
        .flat_map(|e| callrec_names(e))
        .collect();
    assert!(!env.is_empty(), "ENV sets no CALLREC_ defaults");
    for name in &env {
        assert!(
            callrec_reads(&help, name),
            "ENV {name}: callrec does not read it"
        );
    }
}

// ---------------------------------------------------------------------------
// Containerfile packages
// ---------------------------------------------------------------------------

/// The words of a bash array `name=(…)` in deploy/test.sh.
/// (source file, embedded file) for every `include_str!`/`include_bytes!` under `dir`.
fn embedded_files(dir: &std::path::Path) -> Vec<(PathBuf, PathBuf)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(embedded_files(&path));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Test modules are not compiled by `cargo build`.
        let text = text.split("#[cfg(test)]").next().unwrap();
        for macro_name in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in text.match_indices(macro_name) {
                let rest = &text[at + macro_name.len()..];
                let name = &rest[..rest.find('"').unwrap()];
                let target = path.parent().unwrap().join(name);
                let target = target.canonicalize().unwrap_or_else(|_| {
                    panic!("{} embeds {name}, which does not exist", path.display())
                });
                found.push((path.clone(), target));
            }
        }
    }
    found
}

fn test_sh_array(name: &str) -> Vec<String> {
    let text = fs::read_to_string(repo_dir().join("deploy/test.sh")).expect("read deploy/test.sh");
    let start = text
        .find(&format!("\n{name}=("))
        .unwrap_or_else(|| panic!("deploy/test.sh keeps no {name}=(…) list"));
    let body = &text[start + name.len() + 3..];
    let end = body.find(')').expect("closing ) of the list");
    body[..end].split_whitespace().map(str::to_string).collect()
}

/// Packages a stage installs and keeps: every `apt-get install` minus every
/// `apt-get purge` (a package installed only for one step and removed again).
fn stage_packages(stage: &[(String, String)]) -> std::collections::BTreeSet<String> {
    let mut installed = std::collections::BTreeSet::new();
    let mut purged = std::collections::BTreeSet::new();
    for (ins, args) in stage {
        if ins != "RUN" {
            continue;
        }
        for command in args.split("&&") {
            let words: Vec<&str> = command.split_whitespace().collect();
            let Some(at) = words.iter().position(|w| *w == "apt-get") else {
                continue;
            };
            let rest = &words[at + 1..];
            let set = match rest.iter().find(|w| !w.starts_with('-')) {
                Some(&"install") => &mut installed,
                Some(&"purge") | Some(&"remove") => &mut purged,
                _ => continue,
            };
            let verb = rest.iter().position(|w| !w.starts_with('-')).unwrap();
            for w in &rest[verb + 1..] {
                if !w.starts_with('-') {
                    set.insert(w.to_string());
                }
            }
        }
    }
    installed.difference(&purged).cloned().collect()
}

/// The Debian package that owns `path` (merged /usr: try both spellings).
fn owning_package(path: &str) -> Option<String> {
    let mut candidates = vec![path.to_string()];
    if let Ok(real) = fs::canonicalize(path) {
        candidates.push(real.display().to_string());
    }
    for c in candidates.clone() {
        match c.strip_prefix("/usr") {
            Some(short) => candidates.push(short.to_string()),
            None => candidates.push(format!("/usr{c}")),
        }
    }
    candidates.into_iter().find_map(|c| {
        let out = Command::new("dpkg").args(["-S", &c]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let first = text.lines().next()?;
        out.status
            .success()
            .then(|| first.split([':', ',']).next().unwrap().trim().to_string())
    })
}

#[test]
fn deploy_containerfile_installs_what_build_and_binary_need() {
    let ins = instructions(&deploy_file("Containerfile"));
    let froms: Vec<usize> = ins
        .iter()
        .enumerate()
        .filter(|(_, (i, _))| i == "FROM")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(froms.len(), 2, "two stages expected");
    let build_stage = stage_packages(&ins[froms[0]..froms[1]]);
    let runtime_stage = stage_packages(&ins[froms[1]..]);

    // The stages install what deploy/test.sh says the build and the binary need.
    let build_needs: std::collections::BTreeSet<String> =
        test_sh_array("build_packages").into_iter().collect();
    let runtime_needs: std::collections::BTreeSet<String> =
        test_sh_array("runtime_packages").into_iter().collect();
    assert!(!build_needs.is_empty() && !runtime_needs.is_empty());
    assert_eq!(
        build_stage, build_needs,
        "the Containerfile's build stage and deploy/test.sh's build_packages differ"
    );
    assert_eq!(
        runtime_stage, runtime_needs,
        "the Containerfile's runtime stage and deploy/test.sh's runtime_packages differ"
    );

    // What the runtime image has: its packages with their dependencies (apt's
    // view of this Debian release, the one the image is built from), plus the
    // base image's packages (priority required or essential).
    let mut image: std::collections::BTreeSet<String> = Default::default();
    let deps = Command::new("apt-cache")
        .args([
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
        ])
        .args(&runtime_needs)
        .output()
        .expect("run apt-cache (package apt; deploy/test.sh installs it)");
    assert!(deps.status.success(), "apt-cache depends failed");
    for line in String::from_utf8_lossy(&deps.stdout).lines() {
        if !line.starts_with(char::is_whitespace) && !line.starts_with('<') {
            image.insert(line.trim().to_string());
        }
    }
    let base = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Priority} ${Essential}\n"])
        .output()
        .expect("run dpkg-query");
    for line in String::from_utf8_lossy(&base.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 2 && (f[1] == "required" || f.get(2) == Some(&"yes")) {
            image.insert(f[0].to_string());
        }
    }
    for p in &runtime_needs {
        assert!(image.contains(p), "apt does not know {p}");
    }

    // Every shared library the built binary loads comes from the image.
    let bin = env!("CARGO_BIN_EXE_callrec");
    let ldd = Command::new("ldd").arg(bin).output().expect("run ldd");
    assert!(ldd.status.success(), "ldd {bin} failed");
    let ldd = String::from_utf8_lossy(&ldd.stdout).to_string();
    let mut checked = 0;
    for line in ldd.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or_default(),
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if !path.starts_with('/') {
            continue; // the vDSO: provided by the kernel
        }
        let package = owning_package(path)
            .unwrap_or_else(|| panic!("no Debian package owns {path} (from ldd {bin})"));
        assert!(
            image.contains(&package),
            "{path} comes from {package}, which the runtime stage does not install \
             (add it to runtime_packages in deploy/test.sh and to the Containerfile)"
        );
        checked += 1;
    }
    assert!(
        ldd.contains("libsmbclient") && ldd.contains("libssl"),
        "expected the binary to load libsmbclient and libssl:\n{ldd}"
    );
    assert!(checked >= 3, "too few libraries resolved:\n{ldd}");
}
