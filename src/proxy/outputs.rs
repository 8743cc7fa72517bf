//! Where the proxy's output goes, resolved from the configuration: the
//! storage targets of each profile (with their secrets) and the addresses
//! of failure mails. Offline commands resolve them the same way.

use super::StartError;
use crate::storage::{Secrets, TargetSecret};

/// Target URLs per profile, all distinct URLs, and their secrets.
pub type ResolvedTargets = (Vec<Vec<String>>, Vec<String>, Secrets);

/// Where recordings go when a profile names no target: the local folder.
pub(super) fn default_target(data_dir: &std::path::Path) -> String {
    let dir = data_dir.join("recordings");
    let abs = std::path::absolute(&dir).unwrap_or(dir);
    format!("file://{}", abs.display())
}

/// Target URLs per profile (names from the config file resolved), every URL
/// once, and the secrets that the config file gives for them.
pub fn resolve_targets(
    policy: &crate::policy::PolicyConfig,
    data_dir: &std::path::Path,
) -> Result<ResolvedTargets, StartError> {
    let mut secrets = Secrets::new();
    // Delegated OneDrive sign-ins keep their tokens in the data dir.
    secrets.set_data_dir(data_dir);
    let mut all: Vec<String> = Vec::new();
    let mut per_profile = Vec::new();
    for p in &policy.profiles {
        let mut urls = Vec::new();
        for entry in &p.targets {
            let t = policy.resolve_target(entry).ok_or_else(|| {
                StartError::Target(format!(
                    "profile {:?} names target {entry:?}, which is neither a [targets] name in the config file nor a URL",
                    p.name
                ))
            })?;
            if !t.options.is_empty() {
                let bad = |e: &dyn std::fmt::Display| {
                    StartError::Target(format!(
                        "target {entry:?}: {e}; check its options in the config file"
                    ))
                };
                let secret: TargetSecret = toml::Value::try_from(&t.options)
                    .map_err(|e| bad(&e))?
                    .try_into()
                    .map_err(|e| bad(&e))?;
                secrets.insert(t.url.clone(), secret);
            }
            urls.push(t.url);
        }
        if urls.is_empty() {
            urls.push(default_target(data_dir));
        }
        for u in &urls {
            if !all.contains(u) {
                all.push(u.clone());
            }
        }
        per_profile.push(urls);
    }
    if all.is_empty() {
        all.push(default_target(data_dir));
    }
    Ok((per_profile, all, secrets))
}

/// The notifier for `--smtp`, `--notify-email` and the config file's `[smtp]`
/// and profile addresses (also for offline commands).
pub fn notifier_from(
    smtp: Option<String>,
    notify_email: &[String],
    policy: &crate::policy::PolicyConfig,
) -> Result<Option<crate::notify::Notifier>, StartError> {
    let smtp = smtp.or_else(|| policy.smtp.as_ref().map(|s| s.url.clone()));
    let mut to: Vec<String> = notify_email.to_vec();
    for p in &policy.profiles {
        if let Some(a) = &p.notify_email {
            if !to.contains(a) {
                to.push(a.clone());
            }
        }
    }
    let Some(url) = smtp else {
        if !to.is_empty() {
            tracing::warn!("notification addresses are set but no SMTP server (--smtp): no failure mails will be sent");
        }
        return Ok(None);
    };
    if to.is_empty() {
        tracing::warn!("--smtp is set but no address to notify (--notify-email): no failure mails will be sent");
        return Ok(None);
    }
    let from = policy
        .smtp
        .as_ref()
        .map(|s| s.from.clone())
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| "callrec@localhost".to_string());
    let refs: Vec<&str> = to.iter().map(String::as_str).collect();
    let mut mail = crate::notify::MailConfig::new(&url, &from, &refs);
    if let Some(s) = &policy.smtp {
        mail.username = s.user.clone();
        mail.password = s
            .password
            .clone()
            .or_else(|| std::env::var("CALLREC_SMTP_PASSWORD").ok());
    }
    Ok(Some(crate::notify::Notifier::new(mail)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_targets_carry_their_secrets() {
        let cfg = crate::policy::PolicyConfig::parse(
            r#"
[targets.s3]
url = "s3://recordings/callrec/$Y"
endpoint = "http://127.0.0.1:9000"
access_key_id = "AK"
secret_access_key_env = "CALLREC_TEST_S3_SECRET"

[targets.nas]
url = "smb://EX;rec@nas/share/$Y"
password = "pw"

[[profiles]]
name = "a"
record_all = true
targets = ["s3", "nas", "file:///tmp/x"]

[[profiles]]
name = "b"
group = "600"
"#,
            std::path::Path::new("test.toml"),
        )
        .unwrap();
        let (per_profile, all, secrets) =
            resolve_targets(&cfg, std::path::Path::new("/var/lib/callrec")).unwrap();
        assert_eq!(per_profile[0].len(), 3);
        assert_eq!(per_profile[1], vec!["file:///var/lib/callrec/recordings"]);
        assert_eq!(all.len(), 4);
        assert_eq!(
            secrets
                .for_target("smb://EX;rec@nas/share/$Y")
                .password
                .as_deref(),
            Some("pw")
        );
        let s3 = secrets.for_target("s3://recordings/callrec/$Y");
        assert!(format!("{s3:?}").contains("AK"));
    }

    #[test]
    fn an_unknown_target_name_stops_the_start() {
        let cfg = crate::policy::PolicyConfig {
            profiles: vec![crate::policy::Profile {
                targets: vec!["nowhere".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = resolve_targets(&cfg, std::path::Path::new("/d")).unwrap_err();
        assert!(e.to_string().contains("nowhere"), "{e}");
    }
}
