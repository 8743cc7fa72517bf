//! The console's HTML, rendered on the server with maud (which escapes every
//! value it inserts). Plain forms and links, labelled fields, one small script.

use maud::{html, Markup, DOCTYPE};

use super::{Me, Role};
use crate::archive::local_time;
use crate::db::RecordingRow;

/// `m:ss` of a recording's length.
pub fn duration(r: &RecordingRow) -> String {
    match r.end_ms {
        Some(end) => {
            let s = ((end - r.start_ms).max(0) + 500) / 1000;
            format!("{}:{:02}", s / 60, s % 60)
        }
        None => "?".into(),
    }
}

/// A whole page: header with navigation (when logged in), the body, the script.
pub fn layout(title: &str, me: Option<&Me>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · callrec" }
                link rel="stylesheet" href="/console.css";
                script src="/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/recordings" { "callrec" }
                    @if let Some(me) = me {
                        nav aria-label="Main" {
                            a href="/recordings" { "Search" }
                            @if me.role >= Role::Auditor { a href="/access-log" { "Access log" } }
                            @if me.role >= Role::Admin { a href="/operations" { "Operations" } }
                        }
                        form.logout method="post" action="/logout" {
                            span { (me.name) " (" (me.role) ")" }
                            input type="hidden" name="csrf" value=(me.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A short page with one message (errors, refusals).
pub fn message(title: &str, text: &str) -> Markup {
    layout(
        title,
        None,
        html! { p role="alert" { (text) } p { a href="/recordings" { "Back to the search" } } },
    )
}

/// The login form; `csrf` is also in the login cookie.
pub fn login(csrf: &str, error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                p { label for="username" { "User name" } input #username name="username" autocomplete="username" required autofocus; }
                p { label for="password" { "Password" } input #password type="password" name="password" autocomplete="current-password" required; }
                p { button type="submit" { "Log in" } }
            }
        },
    )
}

/// What the search form was given.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct SearchForm {
    /// A party's number, in any spelling.
    #[serde(default)]
    pub number: String,
    /// Words the set's transcript must all contain.
    #[serde(default)]
    pub text: String,
    /// From this date or time (YYYY-MM-DD or RFC 3339).
    #[serde(default)]
    pub from: String,
    /// Up to this date or time.
    #[serde(default)]
    pub to: String,
    /// Only this profile.
    #[serde(default)]
    pub profile: String,
    /// Only `incoming` or `outgoing` calls (empty: both).
    #[serde(default)]
    pub direction: String,
    /// Only sets sealed by this instance (empty: every instance sharing the database).
    #[serde(default)]
    pub instance: String,
}

/// One result row: the recording and where its set is stored.
pub struct Hit {
    /// The recording.
    pub row: RecordingRow,
    /// Targets that confirmed the set.
    pub stored: Vec<String>,
    /// Whether a seal is recorded for it.
    pub sealed: bool,
    /// `incoming` or `outgoing`, once the call's end is recorded.
    pub direction: Option<String>,
}

/// The search page with its results (`None`: nothing searched yet).
pub fn search(me: &Me, f: &SearchForm, hits: Option<&[Hit]>, error: Option<&str>) -> Markup {
    layout(
        "Recordings",
        Some(me),
        html! {
            form.search method="get" action="/recordings" role="search" {
                p { label for="number" { "Number (any spelling)" } input #number name="number" value=(f.number); }
                p { label for="text" { "Words said (transcript)" } input #text name="text" type="search" value=(f.text); }
                p { label for="from" { "From" } input #from name="from" type="date" value=(f.from); }
                p { label for="to" { "To" } input #to name="to" type="date" value=(f.to); }
                p { label for="profile" { "Profile" } input #profile name="profile" value=(f.profile); }
                p { label for="instance" { "Instance" } input #instance name="instance" value=(f.instance); }
                p { label for="direction" { "Direction" }
                    select #direction name="direction" {
                        @for (v, t) in [("", "both"), ("incoming", "incoming"), ("outgoing", "outgoing")] {
                            option value=(v) selected[f.direction == v] { (t) }
                        }
                    }
                }
                p { button type="submit" { "Search" } }
            }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            @if let Some(hits) = hits {
                p #count { (hits.len()) " recording(s)" }
                @if !hits.is_empty() {
                    table.results {
                        caption { "Recordings of " (f.number) @if !f.text.trim().is_empty() { " with the words \"" (f.text) "\"" } }
                        thead { tr { th scope="col" { "Time" } th scope="col" { "Direction" } th scope="col" { "Caller" } th scope="col" { "Callee" } th scope="col" { "Answered by" } th scope="col" { "Duration" } th scope="col" { "Seal" } th scope="col" { "Instance" } th scope="col" { "Stored on" } th scope="col" { "Set" } } }
                        tbody {
                            @for h in hits {
                                tr {
                                    td { (local_time(h.row.start_ms)) }
                                    td { (h.direction.as_deref().unwrap_or("")) }
                                    td { (h.row.caller.as_deref().unwrap_or("")) }
                                    td { (h.row.callee.as_deref().unwrap_or("")) }
                                    td { (h.row.answered_by.as_deref().unwrap_or("")) }
                                    td { (duration(&h.row)) }
                                    td { @if h.sealed { "sealed" } @else { "not sealed yet" } @if h.row.recovered { " (recovered)" } }
                                    td.instance { (h.row.instance.as_deref().unwrap_or("")) }
                                    td { @for t in &h.stored { span.target { (t) } " " } }
                                    td { a href={ "/recordings/" (h.row.base_name) } { (h.row.base_name) } }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Everything the recording page shows.
pub struct RecordingView {
    /// The recording row.
    pub row: RecordingRow,
    /// Problems found by verifying it now (empty: verified).
    pub problems: Vec<String>,
    /// The set's metadata, when readable.
    pub meta: Option<serde_json::Value>,
    /// Audio files by party (`both`, `caller`, `callee`).
    pub parties: Vec<&'static str>,
    /// Channel layout from the metadata (e.g. "stereo").
    pub channels: String,
    /// Targets holding the set.
    pub stored: Vec<String>,
    /// The set's chain: its instance's id, profile and number, from its seal record.
    pub chain: Option<crate::seal::ChainPosition>,
}

/// The recording page: parties, verification, player, metadata, export.
pub fn recording(me: &Me, v: &RecordingView) -> Markup {
    let id = &v.row.base_name;
    let caller = v.row.caller.as_deref().unwrap_or("?");
    let callee = v.row.callee.as_deref().unwrap_or("?");
    let previous = v
        .meta
        .as_ref()
        .and_then(|m| m.get("previous"))
        .and_then(|p| p.get("id"))
        .and_then(|p| p.as_str());
    layout(
        &format!("Recording {id}"),
        Some(me),
        html! {
            section aria-labelledby="ver" {
                h2 #ver { "Verification" }
                @if v.problems.is_empty() {
                    p.ok #verification { "verified: checksums and signature hold against the certificate of instance " (v.row.instance.as_deref().unwrap_or("(unnamed)")) }
                } @else {
                    p.error #verification role="alert" { "verification FAILED: this set is not played" }
                    ul { @for p in &v.problems { li { (p) } } }
                }
                p #chain {
                    "Sealed by instance " strong.instance { (v.row.instance.as_deref().unwrap_or("(unnamed)")) }
                    @if let Some(c) = &v.chain { "; chain " code { (c.instance_id) "/" (c.profile) } ", number " (c.seq) }
                }
                p { "Chain: " @match previous { Some(p) => { "follows " a href={ "/recordings/" (p) } { (p) } }, None => { "first set of the chain" } } }
            }
            section aria-labelledby="listen" {
                h2 #listen { "Listen" }
                dl.parties {
                    @if v.parties == ["both"] && v.channels == "stereo" {
                        dt { "Left channel" } dd { "caller " (caller) }
                        dt { "Right channel" } dd { "callee " (callee) @if let Some(a) = &v.row.answered_by { " (answered by " (a) ")" } }
                    } @else {
                        dt { "Caller" } dd { (caller) }
                        dt { "Callee" } dd { (callee) @if let Some(a) = &v.row.answered_by { " (answered by " (a) ")" } }
                    }
                }
                @if v.problems.is_empty() {
                    @for p in &v.parties {
                        @let src = if *p == "both" { format!("/recordings/{id}/audio") } else { format!("/recordings/{id}/audio?party={p}") };
                        figure {
                            figcaption { @if *p == "both" { "Call audio" } @else { "Voice of the " (p) } }
                            audio controls preload="none" src=(src) data-party=(p) {}
                        }
                    }
                    p { a href={ "/recordings/" (id) "/audio" } download { "Download the audio" } }
                }
                @if me.role >= Role::Auditor && v.problems.is_empty() {
                    p { a #export href={ "/recordings/" (id) "/export" } download { "Download a client export (zip with cert.pem and verify.sh)" } }
                }
            }
            section aria-labelledby="meta" {
                h2 #meta { "Details" }
                dl {
                    dt { "Start" } dd { (local_time(v.row.start_ms)) }
                    dt { "Duration" } dd { (duration(&v.row)) }
                    dt { "Profile" } dd { (v.row.profile.as_deref().unwrap_or("")) }
                    dt { "Call-ID" } dd { (v.row.call_id) }
                    dt { "Stored on" } dd { @for t in &v.stored { (t) " " } }
                }
                @if let Some(m) = &v.meta {
                    details { summary { "Metadata" } pre { (serde_json::to_string_pretty(m).unwrap_or_default()) } }
                }
            }
        },
    )
}
