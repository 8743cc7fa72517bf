//! The config file (profiles, targets, SMTP, number plan, directory): the full
//! example testdata/callrec.toml loads, and mistakes give errors that name them.

use std::path::{Path, PathBuf};

use callrec::policy::{ConfigError, PolicyConfig};
use callrec::vocab::ChannelMode;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/callrec.toml")
}

#[test]
fn full_example_loads() {
    let cfg = PolicyConfig::load(&example()).unwrap();
    assert_eq!(cfg.numbers.area_code, "30");
    assert_eq!(cfg.numbers.exit_code, "0");
    let dir = cfg.directory.as_ref().unwrap();
    assert!(dir.is_rest());
    assert_eq!(dir.login_id.as_deref(), Some("0001"));
    assert_eq!(dir.refresh_secs, 300);
    assert_eq!(cfg.smtp.as_ref().unwrap().from, "callrec@example.com");

    let names: Vec<_> = cfg.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["sales", "support"]);
    let sales = &cfg.profiles[0];
    assert_eq!(sales.group.as_deref(), Some("Sales"));
    assert_eq!(sales.users, ["eva"]);
    assert!(sales.record_direct_calls && !sales.record_all);
    assert_eq!(sales.channels, ChannelMode::Stereo);
    assert_eq!(
        sales.announce_outgoing.as_deref(),
        Some(Path::new("/etc/callrec/announcements/beep.wav"))
    );
    assert_eq!(sales.notify_email.as_deref(), Some("it@example.com"));
    let support = &cfg.profiles[1];
    assert_eq!(support.channels, ChannelMode::Separate);
    assert_eq!(support.language, "en");
    assert_eq!(support.announce_outgoing, None);

    let nas = cfg.resolve_target("nas").unwrap();
    assert!(nas.url.starts_with("smb://"));
    assert_eq!(nas.options["password"], "smb-secret");
    let file = cfg.resolve_target(&support.targets[1]).unwrap();
    assert!(file.url.starts_with("file:///"));
    assert!(cfg.resolve_target("nowhere").is_none());
}

#[test]
fn debug_output_hides_secrets() {
    let cfg = PolicyConfig::load(&example()).unwrap();
    let dbg = format!("{cfg:?}");
    for secret in ["change-me", "smtp-secret", "smb-secret", "graph-secret"] {
        assert!(!dbg.contains(secret), "{secret} leaked into Debug output");
    }
}

fn parse(text: &str) -> Result<PolicyConfig, ConfigError> {
    PolicyConfig::parse(text, Path::new("test.toml"))
}

#[test]
fn mistakes_are_named() {
    let err = parse("[[profiles]]\nname = \"a\"\ntargets = [\"nas\"]\n").unwrap_err();
    assert!(err.to_string().contains("[targets.nas]"), "{err}");

    let err = parse("[[profiles]]\nname = \"a\"\n[[profiles]]\nname = \"a\"\n").unwrap_err();
    assert!(err.to_string().contains("used twice"), "{err}");

    let err = parse("[[profiles]]\nname = \"a\"\nchannels = \"mono\"\n").unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("mono"), "{err}");

    let err = parse("[[profiles]]\nname = \"a\"\ngroupp = \"600\"\n").unwrap_err();
    assert!(err.to_string().contains("groupp"), "{err}");

    let err = parse("[directory]\nsource = \"https://pbx/rest\"\n").unwrap_err();
    assert!(err.to_string().contains("login_id"), "{err}");

    let err = PolicyConfig::load(Path::new("/nonexistent/callrec.toml")).unwrap_err();
    assert!(err.to_string().contains("--config"), "{err}");
}

#[test]
fn empty_file_means_defaults() {
    let cfg = parse("").unwrap();
    assert!(cfg.profiles.is_empty());
    assert_eq!(cfg.numbers.country_code, "49");
    assert_eq!(cfg.numbers.max_extension_len, 4);
}
