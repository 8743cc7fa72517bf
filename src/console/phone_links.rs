//! The operations view's phone links: every directory member's personal
//! recording key link (created when first shown, then kept, since it ends
//! up on a phone) and a rotate button per member. Rotation is an admin's
//! state change: CSRF checked, and written to the access log without the
//! token.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};

use super::handlers::{access, CsrfForm};
use super::{blocking, Console, Me, Refusal, Role};
use crate::access_log::AccessAction;
use crate::phone::{keys, link};
use crate::policy::UserId;

/// The "Phone links" section of the operations view.
pub async fn section(c: &Arc<Console>, me: &Me) -> Result<Markup, Refusal> {
    let Some(planner) = c.core.planner.as_ref() else {
        return Ok(html! {});
    };
    let dir = planner.directory().current();
    let ids: Vec<UserId> = dir.users().iter().map(|u| u.id).collect();
    let db = c.db.clone();
    let tokens = blocking(move || keys::ensure(&db, &ids))
        .await?
        .map_err(|e| Refusal::Internal(e.to_string()))?;
    let phone = &c.core.cfg.phone;
    let base = phone.link_base();
    Ok(html! {
        section aria-labelledby="phone-links" {
            h2 #phone-links { "Phone links" }
            p {
                "Each member's personal recording key: a URL key on the phone that logs the member in to or out of her groups. "
                "The toggle link is shown; " code { "…/login" } " and " code { "…/logout" } " work too. "
                "Rotating a link stops the old one at once."
            }
            @if phone.listen.is_none() {
                p { "The phone listener is off: start callrec with --phone-listen ADDR:PORT to serve these links." }
            } @else if base.is_none() {
                p.error role="alert" { "The phone listener has no address a phone can use: set --phone-base-url." }
            }
            @if tokens.is_empty() { p { "The directory has no members." } }
            @else { table.results #phone-keys {
                thead { tr { th scope="col" { "Member" } th scope="col" { "Login" } th scope="col" { "Link" } th scope="col" { "Rotate" } } }
                tbody { @for (uid, token) in &tokens {
                    @if let Some(u) = dir.user(*uid) {
                        tr.phone-key {
                            td { (u.display_name()) }
                            td { (u.login) }
                            td { code { (link(base.as_deref().unwrap_or(""), token, "toggle")) } }
                            td {
                                form.inline method="post" action={ "/operations/phone-keys/" (uid) "/rotate" } {
                                    input type="hidden" name="csrf" value=(me.csrf);
                                    button type="submit" { "Rotate the link of " (u.display_name()) }
                                }
                            }
                        }
                    }
                } }
            } }
        }
    })
}

/// `POST /operations/phone-keys/<user>/rotate` (admins, CSRF checked).
pub async fn rotate(
    State(c): State<Arc<Console>>,
    me: Me,
    Path(user): Path<UserId>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Refusal> {
    me.require(Role::Admin)?;
    me.check_csrf(f.csrf.as_deref())?;
    let planner = c.core.planner.as_ref().ok_or(Refusal::NotFound)?;
    let login = planner
        .directory()
        .current()
        .user(user)
        .map(|u| u.login.clone())
        .ok_or(Refusal::NotFound)?;
    let db = c.db.clone();
    blocking(move || keys::rotate(&db, user))
        .await?
        .map_err(|e| Refusal::Internal(e.to_string()))?;
    access(
        &c,
        &me,
        AccessAction::PhoneKey,
        &login,
        Some(format!("phone link of member {user} rotated")),
    )
    .await?;
    tracing::info!(user = %me.name, member = %login, "console: phone key link rotated");
    Ok(Redirect::to("/operations").into_response())
}
