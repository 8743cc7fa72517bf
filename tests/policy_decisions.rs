//! Table tests of `policy::decide` against the static
//! directory fixture testdata/directory.toml, plus the internal-call dedup helper.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use callrec::policy::{
    decide, has_no_rules, Directory, LegDedup, LoggedOut, Number, NumberPlan, Profile, Rule,
};

use callrec::vocab::Direction::{self, Incoming, Outgoing};

fn plan() -> NumberPlan {
    NumberPlan {
        country_code: "49".into(),
        area_code: "30".into(),
        exit_code: "0".into(),
        ..NumberPlan::default()
    }
}

fn fixture() -> Directory {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/directory.toml");
    Directory::load_file(&path, plan()).expect("fixture loads")
}

fn sales(direct: bool) -> Profile {
    Profile {
        name: "sales".into(),
        group: Some("Sales".into()),
        users: vec!["eva".into()],
        record_direct_calls: direct,
        announce_incoming: Some(PathBuf::from("in.wav")),
        announce_outgoing: Some(PathBuf::from("beep.wav")),
        ..Profile::default()
    }
}

fn support() -> Profile {
    Profile {
        name: "support".into(),
        group: Some("601".into()),
        ..Profile::default()
    }
}

/// Profile sets used by the table.
#[derive(Clone, Copy, Debug)]
enum Set {
    /// sales (direct calls on, eva selected), then support.
    Main,
    /// sales with direct calls off.
    SalesNoDirect,
    /// Two overlapping profiles: all of Sales first, then clara selected.
    Overlap,
    /// The same two in the other order.
    OverlapReversed,
    /// sales, then a record_all catch-all.
    WithRecordAll,
    /// Only `--group 0309999000` (used with an empty directory).
    CliGroup,
    /// No profile at all.
    Nothing,
    /// One profile without any rule (targets only).
    Ruleless,
}

fn profiles(set: Set) -> Vec<Profile> {
    match set {
        Set::Main => vec![sales(true), support()],
        Set::SalesNoDirect => vec![sales(false)],
        Set::Overlap => vec![
            Profile {
                name: "all-sales".into(),
                group: Some("Sales".into()),
                ..Profile::default()
            },
            Profile {
                name: "clara".into(),
                users: vec!["clara".into()],
                ..Profile::default()
            },
        ],
        Set::OverlapReversed => {
            let mut v = profiles(Set::Overlap);
            v.reverse();
            v
        }
        Set::WithRecordAll => vec![
            sales(true),
            Profile {
                name: "everything".into(),
                record_all: true,
                ..Profile::default()
            },
        ],
        Set::CliGroup => vec![Profile {
            name: "cli".into(),
            group: Some("0309999000".into()),
            ..Profile::default()
        }],
        Set::Nothing => vec![],
        Set::Ruleless => vec![Profile {
            name: "targets-only".into(),
            targets: vec!["file:///tmp/rec".into()],
            ..Profile::default()
        }],
    }
}

struct Case {
    name: &'static str,
    set: Set,
    empty_dir: bool,
    logged_out: &'static [(u64, u64)],
    dir: Direction,
    caller: &'static str,
    dialled: &'static str,
    record: bool,
    profile: Option<&'static str>,
    rule: Rule,
}

#[allow(clippy::too_many_arguments)]
const fn case(
    name: &'static str,
    set: Set,
    logged_out: &'static [(u64, u64)],
    dir: Direction,
    caller: &'static str,
    dialled: &'static str,
    profile: Option<&'static str>,
    rule: Rule,
) -> Case {
    Case {
        name,
        set,
        empty_dir: false,
        logged_out,
        dir,
        caller,
        dialled,
        record: profile.is_some(),
        profile,
        rule,
    }
}

const SALES: Option<&str> = Some("sales");
const SUPPORT: Option<&str> = Some("support");
const NONE: Option<&str> = None;
const ANNA_OUT: &[(u64, u64)] = &[(100, 1)];
const NOBODY: &[(u64, u64)] = &[];
const STRANGER: &str = "+4989555123";

#[rustfmt::skip]
fn table() -> Vec<Case> {
    use Rule::*;
    use Set::*;
    let mut t = vec![
        // The group number, written four ways.
        case("incoming to group number +E.164", Main, NOBODY, Incoming, STRANGER, "+493012345600", SALES, GroupNumber),
        case("incoming to group number 00 prefix", Main, NOBODY, Incoming, STRANGER, "0049 30 12345600", SALES, GroupNumber),
        case("incoming to group number national", Main, NOBODY, Incoming, STRANGER, "030-12345600", SALES, GroupNumber),
        case("incoming to group number as SIP URI", Main, NOBODY, Incoming, STRANGER, "sip:12345600@pbx.example.com;user=phone", SALES, GroupNumber),
        case("anonymous caller to group number", Main, NOBODY, Incoming, "sip:anonymous@anonymous.invalid", "+493012345600", SALES, GroupNumber),
        // A member's own number, with and without the option.
        case("incoming to active member, direct calls on", Main, NOBODY, Incoming, STRANGER, "+493012345201", SALES, DirectCallToActiveMember),
        case("incoming to member, direct calls off", SalesNoDirect, NOBODY, Incoming, STRANGER, "+493012345201", NONE, NoRuleMatched),
        case("incoming to logged-out member, direct calls on", Main, ANNA_OUT, Incoming, STRANGER, "+493012345201", NONE, NoRuleMatched),
        case("incoming to Support member, support has direct calls off", Main, NOBODY, Incoming, STRANGER, "+493012345204", NONE, NoRuleMatched),
        // A selected user's personal number.
        case("incoming to selected user", Main, NOBODY, Incoming, STRANGER, "tel:+49-30-12345205", SALES, SelectedUserNumber),
        case("incoming to second profile's group", Main, NOBODY, Incoming, STRANGER, "<sip:+493012345601@pbx>", SUPPORT, GroupNumber),
        case("incoming to unknown number", Main, NOBODY, Incoming, STRANGER, "+493012345298", NONE, NoRuleMatched),
        // Outgoing.
        case("outgoing by active member (exit code dialled)", Main, NOBODY, Outgoing, "201", "0 089 555123", SALES, OutgoingActiveMember),
        case("outgoing by logged-out member", Main, ANNA_OUT, Outgoing, "sip:201@pbx", "0089555123", NONE, NoRuleMatched),
        case("outgoing by selected user", Main, NOBODY, Outgoing, "205", "00089555123", SALES, OutgoingSelectedUser),
        case("outgoing by selected user, external caller id", Main, NOBODY, Outgoing, "+493012345205", "089555123", SALES, OutgoingSelectedUser),
        case("outgoing by stranger (no group, not selected)", Main, NOBODY, Outgoing, "206", "0089555123", NONE, NoRuleMatched),
        case("outgoing by member of second profile's group", Main, NOBODY, Outgoing, "204", "0089555123", SUPPORT, OutgoingActiveMember),
        case("clara logged out of Sales still recorded by Support", Main, &[(100, 3)], Outgoing, "203", "0089555123", SUPPORT, OutgoingActiveMember),
        // Overlapping profiles, first wins.
        case("overlap: group profile first", Overlap, NOBODY, Outgoing, "203", "0089555123", Some("all-sales"), OutgoingActiveMember),
        case("overlap reversed: selected-user profile first", OverlapReversed, NOBODY, Outgoing, "203", "0089555123", Some("clara"), OutgoingSelectedUser),
        // Internal calls are judged by the callee.
        case("internal: active member calls a non-recorded user", Main, NOBODY, Outgoing, "201", "206", NONE, NoRuleMatched),
        case("internal: stranger calls an active member", Main, NOBODY, Outgoing, "206", "201", SALES, DirectCallToActiveMember),
        case("internal: user calls the group extension", Main, NOBODY, Outgoing, "206", "600", SALES, GroupNumber),
        case("internal via trunk hairpin (exit code + national)", Main, NOBODY, Outgoing, "206", "0 030 12345201", SALES, DirectCallToActiveMember),
        // record_all catches what the profiles before it leave.
        case("record_all after sales", WithRecordAll, NOBODY, Incoming, STRANGER, "+493012345298", Some("everything"), RecordAll),
        case("record_all: sales still first", WithRecordAll, NOBODY, Incoming, STRANGER, "+493012345600", SALES, GroupNumber),
        // No rules at all: every call is recorded.
        case("no profiles: record everything", Nothing, NOBODY, Outgoing, "206", "0089555123", NONE, NoRulesConfigured),
        case("profile without rules: record everything with it", Ruleless, NOBODY, Incoming, STRANGER, "+493012345298", Some("targets-only"), NoRulesConfigured),
    ];
    // A --group number works without any directory.
    t.push(Case {
        empty_dir: true,
        ..case("--group number without directory", CliGroup, NOBODY, Incoming, STRANGER, "+49 30 9999000", Some("cli"), GroupNumber)
    });
    t.push(Case {
        empty_dir: true,
        ..case("--group number without directory, other number", CliGroup, NOBODY, Incoming, STRANGER, "+49 30 9999001", NONE, NoRuleMatched)
    });
    // With no rules every call is recorded although no profile matched.
    for c in &mut t {
        if c.rule == Rule::NoRulesConfigured {
            c.record = true;
        }
    }
    t
}

#[test]
fn decision_table() {
    let full = fixture();
    let empty = Directory::empty(plan());
    let table = table();
    assert!(table.len() >= 15);
    let mut failures = Vec::new();
    for c in &table {
        let profiles = profiles(c.set);
        let mut out = LoggedOut::new();
        for &(g, u) in c.logged_out {
            out.logout(g, u);
        }
        let dir = if c.empty_dir { &empty } else { &full };
        let d = decide(&profiles, dir, &out, c.dir, c.caller, c.dialled);
        let got_profile = d.profile.map(|i| profiles[i].name.as_str());
        assert_eq!(d.profile_name.as_deref(), got_profile, "{}", c.name);
        if d.record != c.record || got_profile != c.profile || d.rule != c.rule {
            failures.push(format!(
                "{}: want record={} profile={:?} rule={:?}, got record={} profile={:?} rule={:?} ({})",
                c.name, c.record, c.profile, c.rule, d.record, got_profile, d.rule, d.reason
            ));
        }
        assert!(!d.reason.is_empty(), "{}: empty reason", c.name);
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn same_number_four_ways_compares_equal() {
    let p = plan();
    let want = Number::E164("493012345600".into());
    for raw in [
        "+493012345600",
        "0049 30 12345600",
        "030/123 456 00",
        "12345600",
    ] {
        assert_eq!(p.normalise(raw), want, "{raw}");
    }
}

#[test]
fn announcement_follows_the_judged_direction() {
    let dir = fixture();
    let out = LoggedOut::new();
    let p = vec![sales(true)];
    let d = decide(&p, &dir, &out, Incoming, STRANGER, "+493012345600");
    assert_eq!(d.announcement, Some(PathBuf::from("in.wav")));
    let d = decide(&p, &dir, &out, Outgoing, "201", "0089555123");
    assert_eq!(d.announcement, Some(PathBuf::from("beep.wav")));
    assert_eq!(d.judged_as, Outgoing);
    // An internal call is judged as incoming to the callee: the incoming announcement.
    let d = decide(&p, &dir, &out, Outgoing, "206", "201");
    assert!(d.internal);
    assert_eq!(d.judged_as, Incoming);
    assert_eq!(d.announcement, Some(PathBuf::from("in.wav")));
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["judged_as"], "incoming");
    assert_eq!(json["rule"], "direct_call_to_active_member");
    assert_eq!(json["caller"], "ext:206");
    assert_eq!(json["dialled"], "ext:201");
    // Not recorded: no announcement.
    let d = decide(&p, &dir, &out, Outgoing, "206", "0089555123");
    assert!(!d.record);
    assert_eq!(d.announcement, None);
}

#[test]
fn reasons_say_why_not() {
    let dir = fixture();
    let mut out = LoggedOut::new();
    out.logout(100, 1);
    let d = decide(&[sales(true)], &dir, &out, Outgoing, "201", "0089555123");
    assert!(!d.record);
    assert!(
        d.reason.contains("anna is logged out of Sales"),
        "{}",
        d.reason
    );
    let d = decide(
        &[sales(false)],
        &dir,
        &LoggedOut::new(),
        Incoming,
        STRANGER,
        "+493012345202",
    );
    assert!(
        d.reason.contains("record_direct_calls is off"),
        "{}",
        d.reason
    );
}

#[test]
fn no_rules_detection() {
    assert!(has_no_rules(&[]));
    assert!(has_no_rules(&profiles(Set::Ruleless)));
    assert!(!has_no_rules(&profiles(Set::CliGroup)));
    assert!(!has_no_rules(&[Profile {
        users: vec!["201".into()],
        ..Profile::default()
    }]));
    assert!(!has_no_rules(&[Profile {
        record_all: true,
        ..Profile::default()
    }]));
}

#[test]
fn internal_call_seen_on_both_legs_is_recorded_once() {
    let dir = fixture();
    let out = LoggedOut::new();
    let p = profiles(Set::Main);
    let dedup = LegDedup::new(Duration::from_secs(10));
    let t0 = Instant::now();
    // Leg 1: from the PBX, anna (201) dials clara's external number with the exit code.
    let leg1 = decide(
        &p,
        &dir,
        &out,
        Outgoing,
        "sip:201@pbx",
        "sip:0030-12345203@trunk",
    );
    // Leg 2: the same call comes back from the trunk with external numbers.
    let leg2 = decide(&p, &dir, &out, Incoming, "+493012345201", "+493012345203");
    for d in [&leg1, &leg2] {
        assert!(d.record && d.internal, "{d:?}");
        assert_eq!(d.rule, Rule::DirectCallToActiveMember);
    }
    // A call keeps its leg's claim while it lives.
    let claims = std::cell::RefCell::new(Vec::new());
    let record = |d: &callrec::policy::Decision, at| {
        if !d.record {
            return false;
        }
        if !d.internal {
            return true;
        }
        match dedup.claim(&dir, &d.caller, &d.dialled, at) {
            Some(c) => {
                claims.borrow_mut().push(c);
                true
            }
            None => false,
        }
    };
    assert!(record(&leg1, t0), "first leg is recorded");
    assert!(
        !record(&leg2, t0 + Duration::from_millis(300)),
        "second leg is not"
    );
    // A new call between the same two, after the window, is recorded again.
    assert!(record(&leg1, t0 + Duration::from_secs(11)));
    // Another pair in the same window is independent.
    let other = decide(&p, &dir, &out, Outgoing, "206", "600");
    assert!(record(&other, t0 + Duration::from_secs(11)));
    assert_eq!(dedup.len(), 2);
    // Both calls end: nothing is held any more.
    claims.borrow_mut().clear();
    assert!(dedup.is_empty());
}

/// A short call and a redial between the same two within the window are two
/// calls, both recorded: the first one's end frees the pair.
#[test]
fn a_redial_after_a_short_internal_call_is_recorded() {
    let dir = fixture();
    let out = LoggedOut::new();
    let p = profiles(Set::Main);
    let dedup = LegDedup::new(Duration::from_secs(5));
    let t0 = Instant::now();
    let call = || decide(&p, &dir, &out, Outgoing, "206", "201");
    let (first, claim) = dedup.apply(&dir, call(), t0);
    assert!(first.record);
    assert!(claim.is_some(), "the first leg holds the pair");
    // While the first call lives, the same pair is its other leg.
    let (again, none) = dedup.apply(&dir, call(), t0 + Duration::from_secs(1));
    assert!(!again.record && none.is_none());
    // The first call ends after 2 s; the redial a second later is recorded.
    drop(claim);
    let (redial, claim) = dedup.apply(&dir, call(), t0 + Duration::from_secs(3));
    assert!(redial.record, "{}", redial.reason);
    assert_eq!(redial.rule, Rule::DirectCallToActiveMember);
    assert!(claim.is_some());
}

#[test]
fn dedup_apply_marks_the_second_leg() {
    let dir = fixture();
    let out = LoggedOut::new();
    let p = profiles(Set::Main);
    let dedup = LegDedup::new(Duration::from_secs(5));
    let t0 = Instant::now();
    let (leg1, _claim) = dedup.apply(&dir, decide(&p, &dir, &out, Outgoing, "206", "201"), t0);
    assert!(leg1.record);
    assert_eq!(leg1.rule, Rule::DirectCallToActiveMember);
    let (leg2, none) = dedup.apply(
        &dir,
        decide(&p, &dir, &out, Incoming, "206", "+493012345201"),
        t0 + Duration::from_secs(1),
    );
    assert!(!leg2.record);
    assert!(none.is_none());
    assert_eq!(leg2.rule, Rule::DuplicateLeg);
    assert_eq!(leg2.announcement, None);
    assert!(leg2.reason.contains("other leg"), "{}", leg2.reason);
    // External calls are never touched, even when repeated at once.
    let ext = decide(&p, &dir, &out, Incoming, STRANGER, "+493012345600");
    assert!(dedup.apply(&dir, ext.clone(), t0).0.record);
    assert!(dedup.apply(&dir, ext, t0).0.record);
}

#[test]
fn profile_entries_are_not_taken_as_ids() {
    // "100" is Sales' id but not a number of any group: as a profile's group it is
    // the plain number 100, not the group with id 100.
    let dir = fixture();
    let p = [Profile {
        name: "by-number".into(),
        group: Some("100".into()),
        ..Profile::default()
    }];
    let d = decide(&p, &dir, &LoggedOut::new(), Outgoing, "201", "0089555123");
    assert!(!d.record, "{}", d.reason);
    let d = decide(&p, &dir, &LoggedOut::new(), Incoming, STRANGER, "100");
    assert!(d.record && d.rule == Rule::GroupNumber);
}

#[test]
fn active_members_exclude_logged_out() {
    let dir = fixture();
    let mut out = LoggedOut::new();
    out.logout(100, 2);
    let sales = dir.find_group("Sales").unwrap();
    assert_eq!(sales.active_members(&out).collect::<Vec<_>>(), vec![1, 3]);
    assert!(sales.is_active_member(1, &out));
    assert!(!sales.is_active_member(2, &out));
    assert!(!sales.is_active_member(4, &out));
}

#[test]
fn fixture_numbers_are_normalised() {
    let dir = fixture();
    assert_eq!(dir.users().len(), 6);
    assert_eq!(dir.groups().len(), 2);
    let ben = dir.find_user("ben").unwrap();
    assert_eq!(
        ben.external_numbers,
        vec![Number::E164("493012345202".into())]
    );
    assert_eq!(ben.internal_numbers, vec![Number::Extension("202".into())]);
    assert_eq!(dir.find_user("+49 30 12345205").unwrap().login, "eva");
    assert_eq!(dir.find_group("support").unwrap().members, vec![3, 4]);
    assert_eq!(dir.find_group("030 12345601").unwrap().name, "Support");
    assert_eq!(dir.find_group("100").unwrap().name, "Sales");
}
