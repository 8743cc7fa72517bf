//! The OneDrive sign-in button of the operations view (admins): the same
//! delegated sign-in as `callrec onedrive authorize`, from the browser. The
//! button makes the Microsoft sign-in link; the admin signs in there and
//! pastes the address the browser ends on (or its code); the console then
//! stores the token and shows whose account it is. Both steps are CSRF
//! checked and written to the access log.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::handlers::access;
use super::{pages, Console, Me, Refusal, Role};
use crate::access_log::AccessAction;
use crate::storage::onedrive::{self, AuthorizeOutcome};

/// The `onedrive://` targets among `urls` that sign in delegated.
pub(super) fn delegated(urls: &[String], secrets: &crate::storage::Secrets) -> Vec<String> {
    onedrive::delegated_targets(urls.iter().map(String::as_str), secrets)
}

/// When the token of `url` was last stored, if it was.
fn token_stored(c: &Console, url: &str) -> Option<i64> {
    let file =
        onedrive::token_file_for(Some(&c.core.cfg.data_dir), url, &c.secrets.for_target(url))?;
    let modified = std::fs::metadata(file).ok()?.modified().ok()?;
    let since = modified.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

/// The operations view's OneDrive section: each delegated target, whether a
/// token is stored, and its sign-in button.
pub(super) fn section(c: &Console, me: &Me) -> Markup {
    html! {
        section aria-labelledby="onedrive" {
            h2 #onedrive { "OneDrive sign-in" }
            @if c.onedrive_targets.is_empty() {
                p { "No OneDrive target with delegated sign-in is configured." }
            }
            ul { @for url in &c.onedrive_targets {
                li {
                    code { (url) } ": "
                    @match token_stored(c, url) {
                        Some(at) => { "token stored " (crate::archive::local_time(at)) " " },
                        None => { "not signed in " },
                    }
                    form.inline method="post" action="/operations/onedrive/start" {
                        input type="hidden" name="csrf" value=(me.csrf);
                        input type="hidden" name="target" value=(url);
                        button type="submit" { "Sign in to OneDrive" }
                    }
                }
            } }
        }
    }
}

#[derive(Deserialize)]
pub struct SignInForm {
    csrf: Option<String>,
    #[serde(default)]
    target: String,
    #[serde(default)]
    code: String,
}

/// The configured delegated target `url`, or not found: the form cannot
/// name a target of its own.
fn known<'a>(c: &'a Console, url: &str) -> Result<&'a str, Refusal> {
    c.onedrive_targets
        .iter()
        .find(|t| *t == url)
        .map(String::as_str)
        .ok_or(Refusal::NotFound)
}

fn page(me: &Me, code: StatusCode, body: Markup) -> Response {
    let body = html! { (body) p { a href="/operations" { "Back to Operations" } } };
    let page = pages::layout("OneDrive sign-in", Some(me), body).into_string();
    (code, Html(page)).into_response()
}

/// `POST /operations/onedrive/start`: the sign-in link and the form for what comes back.
pub async fn start(
    State(c): State<Arc<Console>>,
    me: Me,
    Form(f): Form<SignInForm>,
) -> Result<Response, Refusal> {
    me.require(Role::Admin)?;
    me.check_csrf(f.csrf.as_deref())?;
    let url = known(&c, &f.target)?;
    let outcome = onedrive::authorize(&c.core.cfg.data_dir, url, &c.secrets, None).await;
    let link = match outcome {
        Ok(AuthorizeOutcome::Link { url }) => url,
        Ok(other) => return Err(Refusal::Internal(format!("unexpected {other:?}"))),
        Err(e) => {
            let e = e.to_string();
            configured(&c, &me, url, format!("OneDrive sign-in not started: {e}")).await?;
            return Ok(page(
                &me,
                StatusCode::BAD_GATEWAY,
                html! { p role="alert" { (e) } },
            ));
        }
    };
    configured(&c, &me, url, "OneDrive sign-in started".into()).await?;
    Ok(page(
        &me,
        StatusCode::OK,
        html! {
            p { "Target " code { (url) } "." }
            ol {
                li { a id="signin-link" href=(link) target="_blank" rel="noopener noreferrer" { "Open the Microsoft sign-in page" }
                     " and sign in with the account whose drive receives the recordings." }
                li { "The browser then ends on an address containing " code { "code=" } "; copy that whole address (or only the code) into the field below." }
            }
            form method="post" action="/operations/onedrive/finish" {
                input type="hidden" name="csrf" value=(me.csrf);
                input type="hidden" name="target" value=(url);
                label for="code" { "Address or code" }
                input #code type="text" name="code" required autocomplete="off";
                button type="submit" { "Finish sign-in" }
            }
        },
    ))
}

/// `POST /operations/onedrive/finish`: exchanges the code, stores the token and
/// shows whose account it is.
pub async fn finish(
    State(c): State<Arc<Console>>,
    me: Me,
    Form(f): Form<SignInForm>,
) -> Result<Response, Refusal> {
    me.require(Role::Admin)?;
    me.check_csrf(f.csrf.as_deref())?;
    let url = known(&c, &f.target)?;
    let data_dir = &c.core.cfg.data_dir;
    if let Err(e) = onedrive::authorize(data_dir, url, &c.secrets, Some(&f.code)).await {
        let e = e.to_string();
        configured(&c, &me, url, format!("OneDrive sign-in failed: {e}")).await?;
        let body = html! {
            p role="alert" { "Sign-in failed: " (e) }
            p { "Start again with the button on the Operations page for a new link." }
        };
        return Ok(page(&me, StatusCode::BAD_REQUEST, body));
    }
    let (who, detail) = match onedrive::signed_in_as(data_dir, url, &c.secrets).await {
        Ok(who) => (who.clone(), format!("OneDrive signed in as {who}")),
        Err(e) => (
            format!("(the account could not be read: {e})"),
            format!("OneDrive signed in; account not read: {e}"),
        ),
    };
    tracing::info!(user = %me.name, target_url = %url, account = %who, "console: OneDrive signed in");
    configured(&c, &me, url, detail).await?;
    Ok(page(
        &me,
        StatusCode::OK,
        html! {
            p role="status" id="signed-in" { "Signed in to OneDrive as " strong { (who) } "." }
            p { "The token for " code { (url) } " is stored in the data folder (readable only by callrec) and renewed automatically; uploads to this target use it from now on." }
        },
    ))
}

/// Puts a step of the sign-in into the access log (action `configure`).
async fn configured(c: &Console, me: &Me, url: &str, detail: String) -> Result<(), Refusal> {
    access(c, me, AccessAction::Configure, url, Some(detail)).await
}
