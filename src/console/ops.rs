//! The admins' operations view: the upload queue per instance and target, recent
//! recording failures, group membership with login/logout buttons, the
//! members' phone links (see `phone_links`), and the instance certificate
//! with its fingerprint.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;

use super::handlers::CsrfForm;
use super::{blocking, pages, Console, Me, Refusal, Role};

/// Waiting uploads of one target.
#[derive(Default)]
struct Queue {
    pending: usize,
    oldest_ms: Option<i64>,
    last_error: Option<String>,
}

/// SHA-256 fingerprint of a PEM certificate, as `AB:CD:…`.
fn fingerprint(pem: &str) -> Option<String> {
    let cert = openssl::x509::X509::from_pem(pem.as_bytes()).ok()?;
    let d = cert.digest(openssl::hash::MessageDigest::sha256()).ok()?;
    Some(
        d.iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// `GET /operations` (admins).
pub async fn operations(State(c): State<Arc<Console>>, me: Me) -> Result<Response, Refusal> {
    me.require(Role::Admin)?;
    let c2 = c.clone();
    let (queues, failures, pem) = blocking(move || -> Result<_, String> {
        // Every instance sharing the database: each uploads from its own spool.
        let mut queues: BTreeMap<(String, String), Queue> = BTreeMap::new();
        for u in c2.db.all_pending_uploads().map_err(|e| e.to_string())? {
            let q = queues
                .entry((u.instance.unwrap_or_default(), u.target))
                .or_default();
            q.pending += 1;
            q.oldest_ms = Some(q.oldest_ms.map_or(u.queued_ms, |o| o.min(u.queued_ms)));
            if u.last_error.is_some() {
                q.last_error = u.last_error;
            }
        }
        let failures: Vec<(i64, String, Option<String>, String, String)> = c2
            .db
            .read(|c| {
                c.query("SELECT at_ms, call_id, base_name, reason, detail FROM failures ORDER BY id DESC LIMIT 100", &[])?
                    .iter()
                    .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                    .collect()
            })
            .map_err(|e| e.to_string())?;
        let pem = std::fs::read_to_string(&c2.cert_path).unwrap_or_default();
        Ok((queues, failures, pem))
    })
    .await?
    .map_err(Refusal::Internal)?;
    let groups = c.core.planner.as_ref().map(|p| {
        let dir = p.directory().current();
        let out = p.membership().snapshot();
        dir.groups()
            .iter()
            .map(|g| {
                let members: Vec<(u64, String, bool)> = g
                    .members
                    .iter()
                    .map(|&u| {
                        let name = dir
                            .user(u)
                            .map(|u| u.display_name())
                            .unwrap_or_else(|| u.to_string());
                        (u, name, !out.is_logged_out(g.id, u))
                    })
                    .collect();
                (g.id, g.name.clone(), members)
            })
            .collect::<Vec<_>>()
    });
    let phone_links = super::phone_links::section(&c, &me).await?;
    let body = html! {
        section aria-labelledby="uploads" {
            h2 #uploads { "Upload queue" }
            @if queues.is_empty() { p { "Nothing waiting: every set is delivered." } }
            @else {
                table.results {
                    thead { tr { th scope="col" { "Instance" } th scope="col" { "Target" } th scope="col" { "Sets waiting" } th scope="col" { "Oldest since" } th scope="col" { "Last error" } } }
                    tbody { @for ((i, t), q) in &queues { tr { td.instance { (i) } td { (t) } td { (q.pending) } td { (q.oldest_ms.map(crate::archive::local_time).unwrap_or_default()) } td { (q.last_error.as_deref().unwrap_or("")) } } } }
                }
            }
        }
        section aria-labelledby="failures" {
            h2 #failures { "Recording failures" }
            @if failures.is_empty() { p { "None recorded." } }
            @else {
                table.results {
                    thead { tr { th scope="col" { "Time" } th scope="col" { "Reason" } th scope="col" { "Call-ID" } th scope="col" { "Set" } th scope="col" { "Detail" } } }
                    tbody { @for (at, call, base, reason, detail) in &failures { tr { td { (crate::archive::local_time(*at)) } td { (reason) } td { (call) } td { (base.as_deref().unwrap_or("")) } td { (detail) } } } }
                }
            }
        }
        section aria-labelledby="groups" {
            h2 #groups { "Group membership" }
            @match &groups {
                None => p { "No recording policy with a directory is configured." },
                Some(gs) => {
                    @for (gid, gname, members) in gs {
                        h3 { (gname) }
                        ul { @for (uid, uname, active) in members {
                            li {
                                (uname) ": " @if *active { "logged in" } @else { "logged out" } " "
                                form.inline method="post" action={ "/operations/groups/" (gid) "/members/" (uid) "/" (if *active { "logout" } else { "login" }) } {
                                    input type="hidden" name="csrf" value=(me.csrf);
                                    button type="submit" { @if *active { "Log out of " } @else { "Log in to " } (gname) }
                                }
                            }
                        } }
                    }
                }
            }
        }
        (super::onedrive::section(&c, &me))
        (phone_links)
        section aria-labelledby="cert" {
            h2 #cert { "Instance certificate" }
            p { "SHA-256 fingerprint: " code #fingerprint { (fingerprint(&pem).unwrap_or_else(|| "(no certificate)".into())) } }
            pre { (pem) }
        }
    };
    let page = pages::layout("Operations", Some(&me), body).into_string();
    Ok(axum::response::Html(page).into_response())
}

/// `POST /operations/groups/<g>/members/<u>/<login|logout>` (admins, CSRF checked).
pub async fn membership(
    State(c): State<Arc<Console>>,
    me: Me,
    Path((group, user, action)): Path<(u64, u64, String)>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Refusal> {
    me.require(Role::Admin)?;
    me.check_csrf(f.csrf.as_deref())?;
    let planner = c.core.planner.as_ref().ok_or(Refusal::NotFound)?;
    let store = planner.membership();
    let r = match action.as_str() {
        "login" => store.login(group, user),
        "logout" => store.logout(group, user),
        _ => return Err(Refusal::NotFound),
    };
    r.map_err(|e| Refusal::Internal(e.to_string()))?;
    let dir = planner.directory().current();
    let member = dir.user(user).map_or(user.to_string(), |u| u.login.clone());
    let group_name = dir
        .group(group)
        .map_or(group.to_string(), |g| g.name.clone());
    let entry = crate::access_log::AccessEntry::membership(
        super::handlers::actor(&me.name),
        &member,
        &format!("group {group_name}"),
        action == "login",
        "console",
    );
    super::handlers::record(&c, entry).await?;
    tracing::info!(user = %me.name, group, member = user, action = %action, "console: group membership switched");
    Ok(Redirect::to("/operations").into_response())
}
