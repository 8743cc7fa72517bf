//! Puts each member's phone link onto her phone through the PBX's REST API,
//! for the groups of profiles with `provision_phone_keys = true`: one URL
//! function key appended at the end of each of her key sets (the user's own
//! keys never move), found again by the link's prefix, changed in place when
//! the link was rotated, removed when she leaves the group; after a change
//! the phones using the set are asked to reload it. Runs after each
//! directory refresh interval; every change is logged (never the link,
//! whose token is a credential).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::{keys, link};
use crate::db::Db;
use crate::policy::rest::{FunctionKey, GENERIC_URL};
use crate::policy::{Directory, DirectoryHandle, PbxClient, Profile, RestError, UserId};

/// The key's label on the phone.
pub const KEY_LABEL: &str = "Recording";

/// What the provisioning task needs.
pub struct Provisioner {
    client: Arc<PbxClient>,
    db: Db,
    directory: Arc<DirectoryHandle>,
    profiles: Vec<Profile>,
    /// The links' start (`http://host:port`).
    base: String,
}

/// Starts the task when a profile asks for it; explains in the log why not when it cannot run.
pub fn spawn(
    cfg: &crate::config::RunConfig,
    directory: Arc<DirectoryHandle>,
    db: Db,
) -> Option<tokio::task::JoinHandle<()>> {
    let wanted: Vec<&str> = cfg
        .policy
        .profiles
        .iter()
        .filter(|p| p.provision_phone_keys)
        .map(|p| p.name.as_str())
        .collect();
    if wanted.is_empty() {
        return None;
    }
    let refuse = |why: &str| {
        tracing::error!(profiles = ?wanted, "provision_phone_keys is set but no key is provisioned: {why}");
        None
    };
    let Some(dir_cfg) = cfg.policy.directory.as_ref() else {
        return refuse("no [directory] is configured");
    };
    // The directory's own session: one token on the PBX, logged out at shutdown.
    let Some(client) = directory.session().filter(|_| dir_cfg.is_rest()) else {
        return refuse("the directory is not the PBX's REST API");
    };
    if cfg.phone.listen.is_none() {
        return refuse("the phone listener is off (--phone-listen)");
    }
    let Some(base) = cfg.phone.link_base() else {
        return refuse("the links have no address a phone can use (--phone-base-url)");
    };
    let p = Provisioner {
        client,
        db,
        directory,
        profiles: cfg.policy.profiles.clone(),
        base,
    };
    let every = Duration::from_secs(dir_cfg.refresh_secs.max(1));
    Some(tokio::spawn(async move { p.run(every).await }))
}

impl Provisioner {
    async fn run(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Without one good snapshot every member would look gone and lose her key.
            if self.directory.status().last_success.is_none() {
                continue;
            }
            let dir = self.directory.current();
            if let Err(e) = self.once(&dir).await {
                tracing::error!(error = %e, "phone key provisioning failed; retried at the next refresh");
            }
        }
    }

    /// Members of the groups of the profiles that provision keys.
    fn wanted(&self, dir: &Directory) -> BTreeSet<UserId> {
        self.profiles
            .iter()
            .filter(|p| p.provision_phone_keys)
            .filter_map(|p| p.group.as_deref())
            .filter_map(|g| dir.find_group(g))
            .flat_map(|g| g.members.iter().copied())
            .filter(|u| dir.user(*u).is_some())
            .collect()
    }

    /// One pass: every wanted member has her key, every former one has none.
    pub async fn once(&self, dir: &Directory) -> Result<(), ProvisionError> {
        let wanted = self.wanted(dir);
        let ids: Vec<UserId> = wanted.iter().copied().collect();
        let db = self.db.clone();
        let (tokens, placed) = tokio::task::spawn_blocking(move || {
            Ok::<_, keys::PhoneKeyError>((keys::ensure(&db, &ids)?, keys::provisioned(&db)?))
        })
        .await
        .expect("phone key lookup panicked")?;
        for (uid, token) in tokens {
            let Some(user) = dir.user(uid) else { continue };
            // Noted before the PBX is asked: a stop between the two then
            // leaves a key callrec knows to remove, never one it forgot.
            if !placed.iter().any(|(u, l)| *u == uid && *l == user.login) {
                self.mark(uid, Some(user.login.clone())).await?;
            }
            let url = link(&self.base, &token, "toggle");
            if let Err(e) = self.place(&user.login, uid, &url).await {
                tracing::warn!(member = %user.login, error = %keys::redact(&e.to_string()), "phone key not provisioned; retried at the next refresh")
            }
        }
        for (uid, login) in placed.into_iter().filter(|(u, _)| !wanted.contains(u)) {
            match self.remove(&login).await {
                Ok(()) => self.mark(uid, None).await?,
                Err(e) => {
                    tracing::warn!(member = %login, error = %keys::redact(&e.to_string()), "phone key of a former member not removed; retried at the next refresh")
                }
            }
        }
        Ok(())
    }

    async fn mark(&self, uid: UserId, login: Option<String>) -> Result<(), ProvisionError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || keys::set_provisioned(&db, uid, login.as_deref()))
            .await
            .expect("phone key update panicked")?;
        Ok(())
    }

    /// Whether `k` is a key callrec placed (a URL key below the links' prefix).
    fn ours(&self, k: &FunctionKey) -> bool {
        let prefix = format!("{}/phone/", self.base);
        k.function_key_type == GENERIC_URL
            && k.generic_url
                .as_deref()
                .is_some_and(|u| u.starts_with(&prefix))
    }

    /// Puts the key with `url` into each of `login`'s key sets.
    async fn place(&self, login: &str, uid: UserId, url: &str) -> Result<(), RestError> {
        for set in self.client.function_key_sets(login).await? {
            let keys = self.client.function_keys(login, &set.id).await?;
            let mut ours = keys.iter().filter(|k| self.ours(k));
            let mut changed = false;
            match ours.next() {
                None => {
                    let key = FunctionKey {
                        account_id: uid.to_string(),
                        function_key_type: GENERIC_URL.into(),
                        id: None,
                        name: KEY_LABEL.into(),
                        position: None,
                        generic_url: Some(url.to_string()),
                        other: Default::default(),
                    };
                    let made = self
                        .client
                        .append_function_key(login, &set.id, &key)
                        .await?;
                    tracing::info!(member = login, set = %set.id, key = ?made.id, position = ?made.position, "phone key appended to the member's function keys");
                    changed = true;
                }
                Some(k) if k.generic_url.as_deref() != Some(url) => {
                    // A rotated link: changed in place, so no key moves.
                    let mut k = k.clone();
                    k.generic_url = Some(url.to_string());
                    self.client.update_function_key(login, &set.id, &k).await?;
                    tracing::info!(member = login, set = %set.id, key = ?k.id, "phone key changed to the member's new link");
                    changed = true;
                }
                Some(_) => {}
            }
            for extra in ours {
                let id = extra.id.clone().unwrap_or_default();
                self.client.delete_function_key(login, &set.id, &id).await?;
                tracing::info!(member = login, set = %set.id, key = %id, "duplicate phone key removed");
                changed = true;
            }
            if changed {
                self.reload(login, &set.id).await;
            }
        }
        Ok(())
    }

    /// Takes callrec's key out of each of `login`'s key sets.
    async fn remove(&self, login: &str) -> Result<(), RestError> {
        for set in self.client.function_key_sets(login).await? {
            let keys = self.client.function_keys(login, &set.id).await?;
            let mut changed = false;
            for k in keys.iter().filter(|k| self.ours(k)) {
                let id = k.id.clone().unwrap_or_default();
                self.client.delete_function_key(login, &set.id, &id).await?;
                tracing::info!(member = login, set = %set.id, key = %id, "phone key removed: no longer a member of a group that provisions keys");
                changed = true;
            }
            if changed {
                self.reload(login, &set.id).await;
            }
        }
        Ok(())
    }

    async fn reload(&self, login: &str, set: &str) {
        match self.client.reload_phones(login, set).await {
            Ok(phones) => {
                tracing::info!(member = login, set, phones = ?phones, "phones asked to reload their function keys")
            }
            Err(e) => {
                tracing::warn!(member = login, set, error = %keys::redact(&e.to_string()), "phones not asked to reload their function keys; the key arrives with their next provisioning")
            }
        }
    }
}

/// A provisioning pass failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The tokens could not be read or written.
    #[error(transparent)]
    Keys(#[from] keys::PhoneKeyError),
}
