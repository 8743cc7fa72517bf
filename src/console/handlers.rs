//! The console's request handlers: login and logout, search, the recording
//! page, audio (with HTTP Range, via tower-http's file service), the client
//! export and the access log. Each search, playback and export is written to
//! the access log with the user.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::auth::{self, LOGIN_COOKIE, SESSION_COOKIE};
use super::lookup::{direction_of, find, stored_on};
use super::pages::{self, Hit, RecordingView, SearchForm};
use super::{blocking, console_on, sets, users, Console, Me, Refusal, Role};
use crate::access_log::{AccessAction, AccessEntry};

fn page(m: maud::Markup) -> Response {
    Html(m.into_string()).into_response()
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::Internal(e.to_string())
}

/// Writes one console action to the access log, as `console:<user>`, and
/// waits for the commit: what is not logged is not shown.
pub(super) async fn access(
    c: &Console,
    me: &Me,
    action: AccessAction,
    subject: &str,
    detail: Option<String>,
) -> Result<(), Refusal> {
    tracing::info!(user = %me.name, role = %me.role, action = %action, subject, "console access");
    record(
        c,
        AccessEntry::now(actor(&me.name), action, subject, detail),
    )
    .await
}

/// Writes `entry` to the access log and waits for it: an action whose row
/// cannot be written is answered with an error.
pub(super) async fn record(c: &Console, entry: AccessEntry) -> Result<(), Refusal> {
    let db = c.db.clone();
    blocking(move || crate::access_log::record_sync(&db, entry))
        .await?
        .map_err(internal)
}

/// How console users appear in the access log.
pub(super) fn actor(user: &str) -> String {
    format!("console:{user}")
}

/// `GET /login`: the form, with a fresh CSRF token in a cookie and a field.
pub async fn login_form(State(c): State<Arc<Console>>) -> Result<Response, Refusal> {
    if !console_on(&c).await? {
        return Err(Refusal::NotFound);
    }
    Ok(login_page(&c, StatusCode::OK, None))
}

fn login_page(c: &Console, code: StatusCode, error: Option<&str>) -> Response {
    let token = auth::random_token();
    let cookie = auth::set_cookie(LOGIN_COOKIE, &token, c.settings.secure_cookies, Some(900));
    (
        code,
        [(header::SET_COOKIE, cookie)],
        page(pages::login(&token, error)),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    csrf: Option<String>,
}

/// Password checks run at once; a login beyond them is turned away at once
/// (503, try again). Each check holds its argon2 hash's working memory
/// (19 MiB with the default parameters), so a flood of logins would
/// otherwise take the memory and the blocking threads the recordings need.
pub(super) const PASSWORD_CHECKS_AT_ONCE: usize = 4;

/// An argon2 hash of a random password nobody has: unknown users cost as much
/// time as known ones, so response times do not tell which names exist.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| users::hash_password(&auth::random_token()).unwrap_or_default())
}

/// `POST /login`: checks the CSRF pair, the throttle, then the password.
pub async fn login(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, Refusal> {
    if !console_on(&c).await? {
        return Err(Refusal::NotFound);
    }
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| auth::cookie(h, LOGIN_COOKIE));
    match (cookie, f.csrf.as_deref()) {
        (Some(a), Some(b)) if auth::same_secret(b, a) => {}
        _ => {
            tracing::warn!(addr = %peer.ip(), "console login without a valid CSRF token refused");
            return Err(Refusal::Csrf);
        }
    }
    let addr = peer.ip();
    let name = f.username.trim().to_string();
    if let Some(wait) = c.auth.throttled(&name, addr) {
        let message = format!("console login throttled: user {name:?} from {addr}, too many failed logins; allowed again in {} s", wait.as_secs() + 1);
        tracing::warn!("{message}");
        return Ok(login_page(
            &c,
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many failed logins. Wait a few minutes and try again."),
        ));
    }
    // The place goes into the blocking check itself: a client that hangs up
    // ends this request, not the hash, which keeps its place until done.
    let Ok(checking) = c.password_checks.clone().try_acquire_owned() else {
        tracing::warn!(%addr, "console login turned away: {PASSWORD_CHECKS_AT_ONCE} password checks are running already");
        let mut r = login_page(
            &c,
            StatusCode::SERVICE_UNAVAILABLE,
            Some("The console is busy checking other logins. Try again in a moment."),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return Ok(r);
    };
    let (db, n, pw) = (c.db.clone(), name.clone(), f.password);
    let user = blocking(move || {
        let _checking = checking;
        let user = users::find(&db, &n).map_err(|e| e.to_string())?;
        let hash = user
            .as_ref()
            .map(|u| u.hash.as_str())
            .unwrap_or(dummy_hash());
        let ok = users::password_matches(&pw, hash);
        Ok::<_, String>(user.filter(|_| ok))
    })
    .await?
    .map_err(Refusal::Internal)?;
    let Some(user) = user else {
        c.auth.failed(&name, addr);
        let message = format!("console login failed: user {name:?} from {addr}");
        tracing::warn!("{message}");
        c.db.send(crate::db::Record::Error {
            at_ms: crate::db::now_ms(),
            component: "console".into(),
            message,
        });
        return Ok(login_page(
            &c,
            StatusCode::UNAUTHORIZED,
            Some("Wrong user name or password."),
        ));
    };
    c.auth.succeeded(&user.name);
    let id = c.auth.start(&user.name, &user.hash);
    tracing::info!(user = %user.name, role = %user.role, %addr, "console login");
    let secure = c.settings.secure_cookies;
    let mut r = Redirect::to("/recordings").into_response();
    let h = r.headers_mut();
    for v in [
        auth::set_cookie(SESSION_COOKIE, &id, secure, None),
        auth::set_cookie(LOGIN_COOKIE, "", secure, Some(0)),
    ] {
        h.append(header::SET_COOKIE, v.parse().map_err(internal)?);
    }
    Ok(r)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    pub(super) csrf: Option<String>,
}

/// `POST /logout`: ends the session (CSRF checked, so no page can log you out).
pub async fn logout(
    State(c): State<Arc<Console>>,
    me: Me,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Refusal> {
    me.check_csrf(f.csrf.as_deref())?;
    c.auth.end(&me.session);
    let mut r = Redirect::to("/login").into_response();
    let cookie = auth::set_cookie(SESSION_COOKIE, "", c.settings.secure_cookies, Some(0));
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie.parse().map_err(internal)?);
    Ok(r)
}

/// Milliseconds of a date (local midnight; with `end`, the next midnight) or an RFC 3339 time.
fn parse_when(s: &str, end: bool) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    let d = if end { d.succ_opt()? } else { d };
    let t = d
        .and_hms_opt(0, 0, 0)?
        .and_local_timezone(chrono::Local)
        .earliest()?;
    Some(t.timestamp_millis() - i64::from(end))
}

/// `GET /recordings`: the search form and, with a number, the results.
pub async fn search(
    State(c): State<Arc<Console>>,
    me: Me,
    Query(f): Query<SearchForm>,
) -> Result<Response, Refusal> {
    if f.number.trim().is_empty() && f.text.trim().is_empty() {
        return Ok(page(pages::search(&me, &f, None, None)));
    }
    let from = match f.from.trim() {
        "" => Some(0),
        s => parse_when(s, false),
    };
    let to = match f.to.trim() {
        "" => Some(i64::MAX),
        s => parse_when(s, true),
    };
    let (Some(from), Some(to)) = (from, to) else {
        let e = "Dates: use YYYY-MM-DD (or an RFC 3339 time).";
        return Ok(page(pages::search(&me, &f, None, Some(e))));
    };
    let plan = match &c.core.planner {
        Some(p) => p.directory().current().plan().clone(),
        None => c.core.cfg.policy.numbers.clone(),
    };
    let (db, q) = (c.db.clone(), f.clone());
    let hits = blocking(move || -> Result<Vec<Hit>, String> {
        let mut rows = match q.number.trim() {
            "" => db.recordings(from, to).map_err(|e| e.to_string())?,
            n => crate::archive::search(&db, &plan, n, from, to).map_err(|e| e.to_string())?,
        };
        if !q.text.trim().is_empty() {
            let hits = crate::transcribe::search::sets_with_words(&db, &q.text)
                .map_err(|e| e.to_string())?;
            rows.retain(|r| hits.contains(&r.base_name));
        }
        let profile = q.profile.trim();
        let direction = q.direction.trim();
        let instance = q.instance.trim();
        rows.into_iter()
            .filter(|r| profile.is_empty() || r.profile.as_deref() == Some(profile))
            .filter(|r| instance.is_empty() || r.instance.as_deref() == Some(instance))
            .map(|row| {
                let dir = direction_of(&db, &row.call_id)?;
                Ok((row, dir))
            })
            .filter(|r: &Result<_, String>| match r {
                Ok((_, dir)) => direction.is_empty() || dir.as_deref() == Some(direction),
                Err(_) => true,
            })
            .map(|r| {
                let (row, direction) = r?;
                let stored = stored_on(&db, &row.base_name)?;
                let sealed = db
                    .seal_checksum(&row.base_name)
                    .map_err(|e| e.to_string())?
                    .is_some();
                Ok(Hit {
                    row,
                    stored,
                    sealed,
                    direction,
                })
            })
            .collect()
    })
    .await?
    .map_err(Refusal::Internal)?;
    access(
        &c,
        &me,
        AccessAction::Search,
        &f.number,
        Some(format!(
            "words={:?} from={} to={} profile={} direction={} instance={} results={}",
            f.text,
            f.from,
            f.to,
            f.profile,
            f.direction,
            f.instance,
            hits.len()
        )),
    )
    .await?;
    Ok(page(pages::search(&me, &f, Some(&hits), None)))
}

/// `GET /recordings/<id>`: verified now, with the player when it holds.
pub async fn recording(
    State(c): State<Arc<Console>>,
    me: Me,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let found = find(&c, &id, true).await?;
    let (db, base, sha) = (c.db.clone(), id.clone(), found.sha.clone());
    let (stored, meta, parties, chain) = blocking(move || {
        let stored = stored_on(&db, &base).unwrap_or_default();
        let chain = db.seal_position(&base).ok().flatten();
        let Some(sha) = sha else {
            return (stored, None, Vec::new(), chain);
        };
        let folder = sha.parent().map(|p| p.to_path_buf()).unwrap_or_default();
        let meta = std::fs::read(folder.join(format!("{base}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let parties = sets::audio_files(&sha, &base)
            .into_iter()
            .map(|a| a.party)
            .collect();
        (stored, meta, parties, chain)
    })
    .await?;
    let channels = meta
        .as_ref()
        .and_then(|m| m.pointer("/audio/channel_layout"))
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let ok = if found.problems.is_empty() {
        "verified"
    } else {
        "FAILED"
    };
    access(
        &c,
        &me,
        AccessAction::Verify,
        &id,
        Some(format!("recording page: {ok}")),
    )
    .await?;
    let view = RecordingView {
        row: found.row,
        problems: found.problems,
        meta,
        parties,
        channels,
        stored,
        chain,
    };
    Ok(page(pages::recording(&me, &view)))
}

#[derive(Deserialize)]
pub struct AudioQuery {
    party: Option<String>,
}

/// `GET /recordings/<id>/audio[?party=caller|callee]`: the WAV with HTTP Range;
/// 409 when the set does not verify, so a changed recording is never played.
pub async fn audio(
    State(c): State<Arc<Console>>,
    me: Me,
    Path(id): Path<String>,
    Query(q): Query<AudioQuery>,
    req: Request,
) -> Result<Response, Refusal> {
    // The first request of a session for a set and party verifies the set
    // afresh and writes the `playback` row, whatever range it asks for (a
    // player starts with the whole file or `bytes=0-`; a download may ask
    // for any range, and a too-long range is cut to the whole file); the
    // player's further requests of the next minutes reuse both.
    let want = q.party.as_deref().unwrap_or("both");
    let viewer = super::playback_log::Viewer {
        user: &me.name,
        session: &me.session,
    };
    let covered = c.playbacks.covered(viewer, &id, want);
    let found = find(&c, &id, !covered).await?;
    let Some(sha) = found.sha else {
        return Err(Refusal::NotFound);
    };
    if !found.problems.is_empty() {
        tracing::warn!(user = %me.name, set = %id, "console: playback refused, the set does not verify");
        return Ok((
            StatusCode::CONFLICT,
            page(pages::message(
                "Not played",
                "This set does not verify; it is not played.",
            )),
        )
            .into_response());
    }
    let files = sets::audio_files(&sha, &id);
    let file = files
        .iter()
        .find(|a| a.party == want)
        .or_else(|| files.first().filter(|_| q.party.is_none()))
        .ok_or(Refusal::NotFound)?;
    if !covered {
        let range = req.headers().get(header::RANGE).map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(80)
                .collect::<String>()
        });
        // The party of the file served (a set of separate files serves the
        // caller's when no party is asked for).
        let party = &file.party;
        let detail = match range {
            Some(r) => format!("{party} ({r})"),
            None => party.to_string(),
        };
        access(&c, &me, AccessAction::Playback, &id, Some(detail)).await?;
        c.playbacks.written(viewer, &id, want);
    }
    let mut r = tower_http::services::ServeFile::new(&file.path)
        .try_call(req)
        .await
        .map_err(internal)?
        .map(axum::body::Body::new);
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("private, no-store"),
    );
    Ok(r)
}

/// `GET /recordings/<id>/export`: a zip with the set, cert.pem and verify.sh (auditors and admins).
pub async fn export(
    State(c): State<Arc<Console>>,
    me: Me,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    me.require(Role::Auditor)?;
    let found = find(&c, &id, true).await?;
    if found.sha.is_none() {
        return Err(Refusal::NotFound);
    }
    if !found.problems.is_empty() {
        return Ok((
            StatusCode::CONFLICT,
            page(pages::message(
                "Not exported",
                "This set does not verify; it is not exported.",
            )),
        )
            .into_response());
    }
    let (c2, base, cert_path) = (c.clone(), id.clone(), found.cert);
    let zip = blocking(move || {
        let cert = std::fs::read_to_string(&cert_path).map_err(|e| e.to_string())?;
        let scratch = c2.core.cfg.data_dir.join("console-cache").join("export");
        let mut roots = c2.roots.clone();
        roots.push(c2.fetched.clone());
        sets::export_zip(&base, &roots, &cert, &scratch).map_err(|e| e.to_string())
    })
    .await?
    .map_err(Refusal::Internal)?;
    access(
        &c,
        &me,
        AccessAction::Export,
        &id,
        Some("client zip".into()),
    )
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.zip\""),
            ),
        ],
        zip,
    )
        .into_response())
}

/// Most access log rows the page shows (newest first, last 90 days); `callrec audit` has them all.
const ACCESS_ROWS: usize = 500;

/// `GET /access-log` (auditors and admins): the newest entries; reading it is logged too.
pub async fn access_log(State(c): State<Arc<Console>>, me: Me) -> Result<Response, Refusal> {
    me.require(Role::Auditor)?;
    access(&c, &me, AccessAction::Audit, "access log", None).await?;
    let db = c.db.clone();
    let since = crate::db::now_ms() - 90 * 86_400_000;
    let mut rows = blocking(move || crate::access_log::list(&db, Some(since), None))
        .await?
        .map_err(internal)?;
    rows.reverse();
    rows.truncate(ACCESS_ROWS);
    Ok(page(pages::layout(
        "Access log",
        Some(&me),
        maud::html! {
            p { "The last 90 days, newest first; the whole log: " code { "callrec audit" } "." }
            table.results #access {
                thead { tr { th scope="col" { "Time" } th scope="col" { "Who" } th scope="col" { "Action" } th scope="col" { "What" } th scope="col" { "Detail" } } }
                tbody { @for e in &rows { tr {
                    td { (crate::archive::local_time(e.at_ms)) }
                    td { (e.actor) }
                    td { (e.action) }
                    td { @if sets::valid_id(&e.subject) && e.action != AccessAction::Search { a href={ "/recordings/" (e.subject) } { (e.subject) } } @else { (e.subject) } }
                    td { (e.detail.as_deref().unwrap_or("")) }
                } } }
            }
        },
    )))
}

/// The console's script, embedded in the binary.
pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("console.js"),
    )
        .into_response()
}

/// The console's style sheet, embedded in the binary.
pub async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("console.css"),
    )
        .into_response()
}
