use super::*;
use ward_engine::batch::{Key, Slot};
use ward_engine::fields::ids;
use ward_engine::key_groups::KEY_GROUPS;
use ward_engine::time::WATERMARK_END;

const T0: i64 = 1_767_261_600_000;
const MIN: i64 = 60_000;

/// A test input: an alert (id, host, level, asset criticality, minutes after T0) or an update
/// (case of alert id on host, action, minutes after T0).
#[derive(Clone, Debug)]
enum In {
    Alert(u64, &'static str, &'static str, i64, f64),
    Update(u64, &'static str, &'static str, f64),
}

fn at(minutes: f64) -> i64 {
    T0 + (minutes * MIN as f64) as i64
}

fn alert(n: u64, host: &str, level: &str, criticality: i64, t: i64) -> Alert {
    let mut a = crate::testing::alert(n, &format!("rule-{level}"), level, t);
    a.event = Some(ward_engine::alert::EventJson::from_value(
        &serde_json::json!({"host.name": host, "ward.asset.criticality": criticality}),
    ));
    a
}

fn case_of(n: u64, host: &str) -> String {
    case_id(entity_key(&[("host.name", host)]), serial_of(&format!("{n:032x}")))
}

/// One update event per row: `case.id`, `case.action`, `@timestamp` (fields left out when None).
fn updates(rows: &[(Option<&str>, Option<&str>, i64)]) -> EventBatch {
    let mut b = EventBatch::new();
    let o = b.origin_index(&"acks".into(), &"acks.jsonl".into());
    for (i, (id, action, t)) in rows.iter().enumerate() {
        b.push_raw(o, i as u64, format!("{id:?} {action:?} {t}").as_bytes()).expect("small test records fit");
        for (name, v) in [("case.id", id), ("case.action", action)] {
            if let Some(v) = v {
                let k = b.heap().push_str(name);
                let r = b.heap().push_str(v);
                b.push_slot(Slot { key: Key::Ext(k), value: Value::Str(r) });
            }
        }
        b.push_slot(Slot { key: Key::Core(ids::TIMESTAMP), value: Value::Timestamp(*t) });
    }
    b
}

fn settings(mode: TimerMode) -> Arc<Settings> {
    Arc::new(Settings::new(SlaPolicy::builtin(), mode))
}

fn sla() -> Sla {
    Sla::new(settings(TimerMode::EventTime), "sla".into())
}

fn feed(s: &mut Sla, input: &In, out: &mut OperatorOutput) {
    match input {
        In::Alert(n, host, level, crit, m) => s.process_alert(alert(*n, host, level, *crit, at(*m)), true, out),
        In::Update(n, host, action, m) => {
            s.process_events(updates(&[(Some(&case_of(*n, host)), Some(action), at(*m))]), out)
        }
    }
}

fn time_of(input: &In) -> i64 {
    match input {
        In::Alert(.., m) | In::Update(.., m) => at(*m),
    }
}

/// Feeds inputs in the given order with the watermark trailing the newest by `lag` ms,
/// optionally through a snapshot/restore after input `split` onto `parts` operators' worth of
/// key groups merged back (each restored from its share); then the end of input.
fn run(inputs: &[In], lag: i64, split: Option<usize>) -> OperatorOutput {
    let mut s = sla();
    let mut out = OperatorOutput::default();
    let mut newest = i64::MIN;
    for (i, input) in inputs.iter().enumerate() {
        if Some(i) == split {
            let snaps: Vec<Vec<u8>> = (0..KEY_GROUPS).map(|g| s.snapshot(g).unwrap()).collect();
            let wm = s.watermark;
            s = sla();
            for (g, b) in snaps.iter().enumerate() {
                s.restore(g as u16, b).unwrap();
            }
            s.advance(wm, &mut out);
        }
        feed(&mut s, input, &mut out);
        newest = newest.max(time_of(input));
        s.advance(newest - lag, &mut out);
    }
    s.advance(WATERMARK_END, &mut out);
    assert_eq!(s.live_keys(), 0, "every case is released at the end");
    out
}

/// (kind, sla, minutes after T0) of every record, in emission order.
fn summary(out: &OperatorOutput) -> Vec<(&'static str, Option<SlaKind>, f64)> {
    out.cases.iter().map(|r| (r.kind.as_str(), r.sla, (r.time_ms - T0) as f64 / MIN as f64)).collect()
}

use SlaKind::{Acknowledge as Ack, Contain};

/// Alert levels and criticality giving each priority (see rules/sla/default.yaml), and the
/// priority's acknowledge and contain deadlines in minutes.
const PRIORITIES: [(&str, &str, i64, f64, f64); 3] =
    [("P1", "critical", 25, 15.0, 240.0), ("P2", "critical", 0, 60.0, 1440.0), ("P3", "medium", 0, 240.0, 4320.0)];

#[test]
fn warning_breach_and_met_for_every_priority() {
    for (prio, level, crit, ack, contain) in PRIORITIES {
        let open = In::Alert(1, "h", level, crit, 0.0);
        let upd = |action, m| In::Update(1, "h", action, m);
        let expect = |inputs: Vec<In>, want: Vec<(&'static str, Option<SlaKind>, f64)>, what: &str| {
            // Minutes as the operator rounds them (to the millisecond).
            let want: Vec<_> = want.into_iter().map(|(k, s, m)| (k, s, (at(m) - T0) as f64 / MIN as f64)).collect();
            let out = run(&inputs, 0, None);
            assert_eq!(summary(&out), want, "{prio}, {what}");
            assert!(out.cases.iter().all(|r| r.priority == prio), "{prio}: {:?}", out.cases[0]);
            assert!(out.quarantine.is_empty() && out.filtered == 0);
            assert_eq!(out.consumed as usize, inputs.len(), "{prio} {what}: every input counted");
        };
        let (w_ack, w_contain) = (ack * 0.8, contain * 0.8);
        // Acknowledged and contained before the warnings.
        expect(
            vec![open.clone(), upd("acknowledged", ack / 2.0), upd("contained", contain / 2.0)],
            vec![
                ("case.opened", None, 0.0),
                ("case.acknowledged", Some(Ack), ack / 2.0),
                ("sla.met", Some(Ack), ack / 2.0),
                ("case.contained", Some(Contain), contain / 2.0),
                ("sla.met", Some(Contain), contain / 2.0),
            ],
            "on time",
        );
        // Acknowledged after the warning, exactly at the deadline: still met.
        expect(
            vec![open.clone(), upd("ack", ack), upd("contained", contain / 2.0)],
            vec![
                ("case.opened", None, 0.0),
                ("sla.warning", Some(Ack), w_ack),
                ("case.acknowledged", Some(Ack), ack),
                ("sla.met", Some(Ack), ack),
                ("case.contained", Some(Contain), contain / 2.0),
                ("sla.met", Some(Contain), contain / 2.0),
            ],
            "at the deadline",
        );
        // Acknowledged late; containment late too (after its warning and deadline).
        expect(
            vec![open.clone(), upd("acknowledged", ack * 1.5), upd("contained", contain * 1.25)],
            vec![
                ("case.opened", None, 0.0),
                ("sla.warning", Some(Ack), w_ack),
                ("sla.breached", Some(Ack), ack),
                ("case.acknowledged", Some(Ack), ack * 1.5),
                ("sla.warning", Some(Contain), w_contain),
                ("sla.breached", Some(Contain), contain),
                ("case.contained", Some(Contain), contain * 1.25),
            ],
            "late",
        );
        // Never acknowledged nor contained.
        expect(
            vec![open.clone()],
            vec![
                ("case.opened", None, 0.0),
                ("sla.warning", Some(Ack), w_ack),
                ("sla.breached", Some(Ack), ack),
                ("sla.warning", Some(Contain), w_contain),
                ("sla.breached", Some(Contain), contain),
            ],
            "never",
        );
        // Contained without an acknowledgement: containment acknowledges too.
        let out = run(&[open.clone(), upd("contained", ack / 4.0)], 0, None);
        let kinds: Vec<_> = summary(&out).into_iter().map(|(k, s, _)| (k, s)).collect();
        assert_eq!(
            kinds,
            vec![
                ("case.opened", None),
                ("case.acknowledged", Some(Ack)),
                ("sla.met", Some(Ack)),
                ("case.contained", Some(Contain)),
                ("sla.met", Some(Contain)),
            ]
        );
        let contained = &out.cases[3];
        assert_eq!((contained.tta_ms, contained.ttc_ms), (Some((ack / 4.0 * 60_000.0) as i64), contained.tta_ms));
    }
}

#[test]
fn tta_ttc_and_deadlines_are_on_the_records() {
    let out = run(
        &[
            In::Alert(1, "h", "critical", 25, 0.0),
            In::Update(1, "h", "acknowledged", 20.0),
            In::Update(1, "h", "contained", 90.0),
        ],
        0,
        None,
    );
    let ack = out.cases.iter().find(|r| r.kind == CaseEventKind::Acknowledged).unwrap();
    assert_eq!((ack.tta_ms, ack.deadline_ms, ack.score), (Some(20 * MIN), Some(T0 + 15 * MIN), 85.0));
    let breach = out.cases.iter().find(|r| r.kind == CaseEventKind::Breached).unwrap();
    assert_eq!((breach.time_ms, breach.tta_ms), (T0 + 15 * MIN, None));
    let contained = out.cases.iter().find(|r| r.kind == CaseEventKind::Contained).unwrap();
    assert_eq!((contained.tta_ms, contained.ttc_ms), (Some(20 * MIN), Some(90 * MIN)));
    assert_eq!(contained.entity, vec![("host.name".to_string(), "h".to_string())]);
    assert_eq!(contained.case_id, case_of(1, "h"));
}

#[test]
fn alerts_join_an_open_case_and_raise_its_priority() {
    let out = run(
        &[
            In::Alert(1, "h", "medium", 0, 0.0),  // a P3 case
            In::Alert(2, "h", "medium", 0, 30.0), // joins it
            In::Alert(3, "other", "medium", 0, 31.0),
            In::Update(3, "other", "contained", 32.0),
            In::Alert(4, "h", "critical", 25, 40.0), // joins and raises it to P1
            In::Update(1, "h", "contained", 41.0),
            In::Alert(6, "x", "low", 0, 50.0),
            In::Alert(5, "h", "low", 0, 100.0), // h's case is contained: a new case
            In::Update(5, "h", "contained", 101.0),
            In::Alert(7, "x", "low", 0, 115.0), // 65 min after x's last alert: a new case
            In::Update(6, "x", "contained", 116.0),
            In::Update(7, "x", "contained", 117.0),
        ],
        0,
        None,
    );
    let h1: Vec<_> = out.cases.iter().filter(|r| r.case_id == case_of(1, "h")).collect();
    let kinds: Vec<_> = h1.iter().map(|r| (r.kind.as_str(), r.priority.as_str(), r.alerts)).collect();
    assert_eq!(
        kinds,
        vec![
            ("case.opened", "P3", 1),
            ("case.joined", "P3", 2),
            ("case.joined", "P1", 3),
            ("sla.warning", "P1", 3),
            ("sla.breached", "P1", 3),
            ("case.acknowledged", "P1", 3),
            ("case.contained", "P1", 3),
            ("sla.met", "P1", 3),
        ]
    );
    // The escalation put the P1 deadlines (from the opening) in the past: they fire at once,
    // stamped with their own times.
    assert_eq!((h1[3].time_ms, h1[4].time_ms), (T0 + 12 * MIN, T0 + 15 * MIN));
    let opened: Vec<_> = out.cases.iter().filter(|r| r.kind == CaseEventKind::Opened).map(|r| &r.case_id).collect();
    assert_eq!(
        opened,
        vec![&case_of(1, "h"), &case_of(3, "other"), &case_of(6, "x"), &case_of(5, "h"), &case_of(7, "x")]
    );
    assert_eq!(out.consumed, 12);
}

#[test]
fn bad_and_repeated_updates_are_accounted_for() {
    let mut s = sla();
    let mut out = OperatorOutput::default();
    s.process_alert(alert(1, "h", "high", 0, at(0.0)), true, &mut out);
    let id = case_of(1, "h");
    s.process_events(
        updates(&[
            (None, Some("acknowledged"), at(1.0)),
            (Some(&id), Some("snoozed"), at(1.0)),
            (Some("0123456789abcdef-00000000"), Some("acknowledged"), at(2.0)),
            (Some("not a case id"), Some("acknowledged"), at(2.0)),
            (Some(&id), Some("acknowledged"), at(3.0)),
            (Some(&id), Some("acknowledged"), at(4.0)),
            (Some(&id), Some("contained"), at(5.0)),
            (Some(&id), Some("contained"), at(6.0)),
        ]),
        &mut out,
    );
    s.advance(WATERMARK_END, &mut out);
    let reasons: Vec<_> = out.quarantine.iter().map(|q| (q.reason.as_str(), q.offset)).collect();
    assert_eq!(
        reasons,
        vec![("missing_field", 0), ("invalid_value", 1), ("unknown_case", 2), ("unknown_case", 3), ("unknown_case", 7)],
        "the update after containment finds the case released"
    );
    assert!(out.quarantine[1].detail.contains("snoozed"), "{}", out.quarantine[1].detail);
    assert_eq!(out.filtered, 1, "the repeated acknowledgement");
    assert_eq!(out.consumed, 3, "the alert, the acknowledgement, the containment");
    assert_eq!(&*out.quarantine[2].source, "acks");
}

#[test]
fn output_does_not_depend_on_arrival_order_within_the_lateness() {
    let mut inputs = vec![
        In::Alert(1, "a", "critical", 25, 0.0),
        In::Alert(2, "b", "high", 10, 0.5),
        In::Alert(3, "a", "medium", 0, 1.0),
        In::Update(1, "a", "acknowledged", 1.5),
        In::Alert(4, "c", "critical", 0, 2.0),
        In::Update(2, "b", "acknowledged", 2.5),
        In::Alert(5, "b", "critical", 40, 3.0),
        In::Update(4, "c", "contained", 3.5),
    ];
    for i in 0..40 {
        inputs.push(In::Alert(100 + i, ["a", "b", "c", "d"][i as usize % 4], "low", 0, 4.0 + i as f64 * 0.1));
    }
    let reference = run(&inputs, 0, None);
    assert!(reference.cases.len() > 20);
    // Reversed in chunks of 6 (spanning at most 2.5 minutes) with a 3-minute lateness.
    let shuffled: Vec<In> = inputs.chunks(6).flat_map(|c| c.iter().rev().cloned()).collect();
    let mut a = run(&shuffled, 3 * MIN, None).cases;
    let mut b = reference.cases.clone();
    // Records of different cases at the same watermark step may interleave differently;
    // per case, order and content are identical.
    a.sort_by(|x, y| x.case_id.cmp(&y.case_id));
    b.sort_by(|x, y| x.case_id.cmp(&y.case_id));
    assert_eq!(a, b);
}

#[test]
fn snapshot_and_restore_mid_stream_equal_an_uninterrupted_run() {
    let inputs = vec![
        In::Alert(1, "a", "critical", 25, 0.0),
        In::Alert(2, "b", "medium", 0, 1.0),
        In::Alert(3, "a", "high", 0, 2.0),
        In::Update(2, "b", "acknowledged", 3.0),
        In::Alert(4, "c", "critical", 0, 4.0),
        In::Alert(5, "b", "critical", 40, 5.0),
        In::Update(1, "a", "acknowledged", 20.0),
        In::Update(4, "c", "contained", 21.0),
        In::Alert(6, "a", "low", 0, 22.0),
    ];
    let reference = run(&inputs, MIN, None);
    for split in 1..inputs.len() {
        assert_eq!(run(&inputs, MIN, Some(split)).cases, reference.cases, "split at {split}");
    }
}

#[test]
fn key_groups_restore_onto_two_workers() {
    let mut s = sla();
    let mut out = OperatorOutput::default();
    for (n, host) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
        s.process_alert(alert(n as u64, host, "high", 0, at(n as f64)), true, &mut out);
    }
    s.advance(at(3.0), &mut out);
    let snaps: Vec<Vec<u8>> = (0..KEY_GROUPS).map(|g| s.snapshot(g).unwrap()).collect();
    let mut halves = [sla(), sla()];
    for (g, b) in snaps.iter().enumerate() {
        halves[ward_engine::key_groups::worker_for(g as u16, 2)].restore(g as u16, b).unwrap();
    }
    assert_eq!(halves[0].live_keys() + halves[0].pending.len() + halves[1].live_keys() + halves[1].pending.len(), 6);
    let mut whole = OperatorOutput::default();
    s.advance(WATERMARK_END, &mut whole);
    let mut parts = OperatorOutput::default();
    for h in &mut halves {
        h.advance(at(3.0), &mut parts);
        h.advance(WATERMARK_END, &mut parts);
    }
    let key = |r: &CaseRecord| (r.case_id.clone(), r.time_ms, r.kind);
    let mut a = whole.cases;
    let mut b = parts.cases;
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert_eq!(a, b);
}

#[test]
fn processing_time_timers_follow_the_wall_clock() {
    let mut s = Sla::new(settings(TimerMode::ProcessingTime), "sla".into());
    let now = 1_800_000_000_000;
    let mut out = OperatorOutput::default();
    s.tick(now, &mut out);
    // Event time far in the past: irrelevant to the deadlines.
    s.process_alert(alert(1, "h", "critical", 25, T0), true, &mut out);
    assert_eq!(summary(&out), vec![("case.opened", None, 0.0)]);
    s.advance(WATERMARK_END, &mut out);
    assert_eq!(out.cases.len(), 1, "the watermark does not drive processing-time timers");
    s.tick(now + 11 * MIN, &mut out);
    assert_eq!(out.cases.len(), 1);
    s.tick(now + 12 * MIN, &mut out);
    s.tick(now + 16 * MIN, &mut out);
    let kinds: Vec<_> = out.cases.iter().map(|r| (r.kind.as_str(), r.time_ms - now)).collect();
    assert_eq!(kinds[1..], [("sla.warning", 12 * MIN), ("sla.breached", 15 * MIN)]);
    s.tick(now + 17 * MIN, &mut out);
    s.process_events(updates(&[(Some(&case_of(1, "h")), Some("ack"), T0)]), &mut out);
    let ack = out.cases.last().unwrap();
    assert_eq!((ack.kind, ack.tta_ms), (CaseEventKind::Acknowledged, Some(17 * MIN)));
}

#[test]
fn cases_never_contained_are_released_after_retention() {
    let mut s = sla();
    let mut out = OperatorOutput::default();
    s.process_alert(alert(1, "h", "critical", 25, T0), true, &mut out);
    s.advance(T0 + 4 * 60 * MIN, &mut out);
    assert_eq!(s.live_keys(), 1, "kept after the contain deadline");
    s.advance(T0 + 29 * 60 * MIN, &mut out);
    assert_eq!(s.live_keys(), 0, "released 24 h after its last deadline");
    s.process_events(updates(&[(Some(&case_of(1, "h")), Some("ack"), T0 + 30 * 60 * MIN)]), &mut out);
    s.advance(WATERMARK_END, &mut out);
    assert_eq!(out.quarantine.len(), 1);
    assert_eq!(out.quarantine[0].reason, Reason::UnknownCase);
}

#[test]
fn metrics_count_breaches_and_observe_tta() {
    let metrics = ward_engine::metrics::Metrics::new();
    let mut s = sla();
    s.metrics = Some(super::SlaMetrics::register(&metrics.families, &"sla".into()));
    let mut out = OperatorOutput::default();
    s.process_alert(alert(1, "h", "critical", 25, T0), true, &mut out);
    s.process_alert(alert(2, "g", "medium", 0, T0), true, &mut out);
    s.process_events(updates(&[(Some(&case_of(2, "g")), Some("ack"), at(30.0))]), &mut out);
    s.advance(at(60.0), &mut out);
    let text = metrics.render();
    assert!(text.contains(r#"ward_sla_breaches_total{component="sla",priority="P1",sla="acknowledge"} 1"#), "{text}");
    assert!(text.contains(r#"ward_sla_tta_seconds_count{component="sla",priority="P3"} 1"#), "{text}");
}
