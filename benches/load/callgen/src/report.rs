//! The run's summary as JSON (written by hand: a flat object of numbers,
//! strings and small nested objects needs no serializer crate).

use crate::calls::{Outcome, CALLEE, CALLER};
use crate::media::StreamStats;
use std::time::Duration;

pub enum J {
    Num(f64),
    Int(i64),
    Str(String),
    Null,
    Obj(Vec<(String, J)>),
}

impl J {
    pub fn text(&self) -> String {
        match self {
            J::Num(v) if v.is_finite() => format!("{}", (v * 10000.0).round() / 10000.0),
            J::Num(_) | J::Null => "null".into(),
            J::Int(v) => v.to_string(),
            J::Str(s) => {
                let mut o = String::from("\"");
                for c in s.chars() {
                    match c {
                        '"' => o.push_str("\\\""),
                        '\\' => o.push_str("\\\\"),
                        c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
                        c => o.push(c),
                    }
                }
                o.push('"');
                o
            }
            J::Obj(kv) => {
                let items: Vec<String> = kv
                    .iter()
                    .map(|(k, v)| format!("\"{k}\": {}", v.text()))
                    .collect();
                format!("{{{}}}", items.join(", "))
            }
        }
    }

    fn get(&self, key: &str) -> Option<&J> {
        match self {
            J::Obj(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

fn obj(kv: Vec<(&str, J)>) -> J {
    J::Obj(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn int(v: impl Into<i64>) -> J {
    J::Int(v.into())
}

fn pct(v: &[f64], p: f64) -> J {
    if v.is_empty() {
        return J::Null;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    J::Num(s[((p / 100.0) * (s.len() - 1) as f64).round() as usize])
}

/// A stream passes when it got at least 99 % of what the other party sends
/// and at least 95 % of what it got carries the other party's tone.
fn stream_ok(s: &StreamStats, packets: u32) -> bool {
    s.received * 100 >= u64::from(packets) * 99 && s.tone_frames * 100 >= s.received * 95
}

#[allow(clippy::too_many_arguments)]
pub fn build(
    out: &Outcome,
    streams: &[StreamStats],
    calls: u32,
    rate: f64,
    hold: Duration,
    packets: u32,
    wall: f64,
    (user, sys): (f64, f64),
    max_lag_ms: u64,
    caller_media: &str,
) -> J {
    let sum = |f: fn(&StreamStats) -> u64| streams.iter().map(f).sum::<u64>();
    let sent = sum(|s| s.sent);
    let received = sum(|s| s.received);
    let failed: u32 = out.failed.values().sum();
    let by_party = |p| {
        let mine: Vec<&StreamStats> = streams.iter().filter(|s| s.party == p).collect();
        obj(vec![
            ("streams", int(mine.len() as i64)),
            (
                "ok",
                int(mine.iter().filter(|s| stream_ok(s, packets)).count() as i64),
            ),
            (
                "short",
                int(mine
                    .iter()
                    .filter(|s| s.received * 100 < u64::from(packets) * 99)
                    .count() as i64),
            ),
            (
                "without_tone",
                int(mine
                    .iter()
                    .filter(|s| s.tone_frames * 100 < s.received * 95)
                    .count() as i64),
            ),
            (
                "received",
                int(mine.iter().map(|s| s.received).sum::<u64>() as i64),
            ),
            (
                "srtp_auth_failed",
                int(mine.iter().map(|s| s.auth_failed).sum::<u64>() as i64),
            ),
        ])
    };
    let plateau = match (out.plateau, out.rusage_at_plateau, out.rusage_plateau_end) {
        (Some((a, b)), Some(r0), Some(r1)) => {
            let secs = (b - a).as_secs_f64();
            let cpu = (r1.0 + r1.1) - (r0.0 + r0.1);
            obj(vec![
                ("calls", int(calls)),
                ("seconds", J::Num(secs)),
                ("cpu_s", J::Num(cpu)),
                (
                    "core_pct",
                    J::Num(if secs > 0.0 {
                        100.0 * cpu / secs
                    } else {
                        f64::NAN
                    }),
                ),
            ])
        }
        _ => J::Null,
    };
    let reasons = |m: &std::collections::BTreeMap<String, u32>| {
        J::Obj(m.iter().map(|(k, v)| (k.clone(), int(*v))).collect())
    };
    obj(vec![
        ("generator", J::Str("callgen".into())),
        // The trunk side's media: "srtp" or "rtp"; the callee's is always RTP.
        ("caller_media", J::Str(caller_media.into())),
        ("calls_attempted", int(calls)),
        ("calls_ok", int(out.ok)),
        ("calls_failed", int(failed)),
        ("failures", reasons(&out.failed)),
        ("callee_dialogs", int(out.callee_dialogs)),
        ("callee_failures", reasons(&out.callee_failed)),
        ("rate_cps", J::Num(rate)),
        ("hold_s", J::Num(hold.as_secs_f64())),
        ("max_concurrent", int(out.max_concurrent)),
        ("packets_per_party", int(packets)),
        ("packets_sent", int(sent as i64)),
        ("packets_received", int(received as i64)),
        ("send_errors", int(sum(|s| s.send_errors) as i64)),
        (
            "loss_pct",
            J::Num(if sent > 0 {
                100.0 * (sent as f64 - received as f64) / sent as f64
            } else {
                f64::NAN
            }),
        ),
        ("gaps", int(sum(|s| s.gaps) as i64)),
        ("missing", int(sum(|s| s.missing) as i64)),
        ("late", int(sum(|s| s.late) as i64)),
        ("tone_frames", int(sum(|s| s.tone_frames) as i64)),
        // Packets that failed SRTP authentication: lost as far as the audio goes.
        ("srtp_auth_failed", int(sum(|s| s.auth_failed) as i64)),
        (
            "tone_frame_pct",
            J::Num(if received > 0 {
                100.0 * sum(|s| s.tone_frames) as f64 / received as f64
            } else {
                f64::NAN
            }),
        ),
        ("media_caller", by_party(CALLER)),
        ("media_callee", by_party(CALLEE)),
        (
            "setup_rate_cps",
            match out.answered {
                Some((a, b)) if out.setup_ms.len() > 1 && b > a => {
                    J::Num((out.setup_ms.len() - 1) as f64 / (b - a).as_secs_f64())
                }
                _ => J::Null,
            },
        ),
        (
            "setup_ms",
            obj(vec![
                ("n", int(out.setup_ms.len() as i64)),
                ("median", pct(&out.setup_ms, 50.0)),
                ("p95", pct(&out.setup_ms, 95.0)),
                ("max", pct(&out.setup_ms, 100.0)),
            ]),
        ),
        (
            "cpu",
            obj(vec![
                ("user_s", J::Num(user)),
                ("sys_s", J::Num(sys)),
                ("total_s", J::Num(user + sys)),
                ("wall_s", J::Num(wall)),
                ("core_pct", J::Num(100.0 * (user + sys) / wall)),
            ]),
        ),
        ("plateau", plateau),
        // Worst lateness of a 20 ms send tick: above a few ms the generator itself was short of CPU.
        ("max_tick_lag_ms", int(max_lag_ms as i64)),
    ])
}

/// Every call succeeded and every stream passed its media check.
pub fn passed(j: &J) -> bool {
    let n = |k: &str, sub: Option<&str>| {
        let v = j.get(k);
        let v = match sub {
            Some(s) => v.and_then(|v| v.get(s)),
            None => v,
        };
        match v {
            Some(J::Int(i)) => *i,
            _ => -1,
        }
    };
    n("calls_failed", None) == 0
        && n("calls_ok", None) == n("calls_attempted", None)
        && n("media_caller", Some("ok")) == n("media_caller", Some("streams"))
        && n("media_callee", Some("ok")) == n("media_callee", Some("streams"))
}
