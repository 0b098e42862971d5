use super::*;
use ward_engine::batch::{Key, Slot};
use ward_engine::fields::ids;
use ward_engine::view::key_hash;

fn config(yaml: &str) -> ViewConfig {
    yaml_serde::from_str(yaml).unwrap()
}

fn spec(yaml: &str) -> Arc<ViewSpec> {
    Arc::new(config(yaml).compile("v").unwrap())
}

/// Events of host `h` with `network.bytes` `n` (when given) at time `t`.
fn batch(events: &[(&str, Option<i64>, i64)]) -> EventBatch {
    let mut b = EventBatch::new();
    let o = b.origin_index(&"s".into(), &"p".into());
    for (i, (host, bytes, t)) in events.iter().enumerate() {
        b.push_raw(o, i as u64, format!("{host}@{t}").as_bytes()).expect("small test records fit");
        let r = b.heap().push_str(host);
        b.push_slot(Slot { key: Key::Core(ids::HOST_NAME), value: Value::Str(r) });
        if let Some(n) = bytes {
            b.push_slot(Slot { key: Key::Core(ids::NETWORK_BYTES), value: Value::Int(*n) });
        }
        b.push_slot(Slot { key: Key::Core(ids::TIMESTAMP), value: Value::Timestamp(*t) });
    }
    b
}

/// A view owning every key group (one worker).
fn view(spec: &Arc<ViewSpec>) -> View {
    View {
        spec: spec.clone(),
        owned: vec![true; KEY_GROUPS as usize],
        state: HashMap::new(),
        watermark: WATERMARK_MIN,
        epoch_updates: HashMap::default(),
        windows: Vec::new(),
    }
}

fn s(x: &str) -> ViewValue {
    ViewValue::Str(x.into())
}

#[test]
fn windows_hold_every_event_time_once_per_slide() {
    let tumbling = spec("{measures: [{name: n, fn: count}], window: {size: 1m}}");
    let mut w = Vec::new();
    tumbling.windows(61_000, &mut w);
    assert_eq!(w, vec![Some((60_000, 120_000))]);
    tumbling.windows(-1, &mut w);
    assert_eq!(w, vec![Some((-60_000, 0))], "before 1970 too");
    let sliding = spec("{measures: [{name: n, fn: count}], window: {size: 3m, slide: 1m}}");
    sliding.windows(181_000, &mut w);
    assert_eq!(w, vec![Some((60_000, 240_000)), Some((120_000, 300_000)), Some((180_000, 360_000))]);
    assert!(w.iter().all(|x| x.is_some_and(|(a, b)| a <= 181_000 && 181_000 < b)));
    let none = spec("{measures: [{name: n, fn: count}]}");
    none.windows(5, &mut w);
    assert_eq!(w, vec![None]);
}

#[test]
fn measures_read_consolidated_inputs() {
    let spec = spec(
        "{group_by: [host.name], measures: [{name: n, fn: count}, {name: d, fn: count_distinct, field: network.bytes}, \
         {name: total, fn: sum, field: network.bytes}, {name: mean, fn: avg, field: network.bytes}, \
         {name: lo, fn: min, field: network.bytes}, {name: hi, fn: max, field: network.bytes}]}",
    );
    assert_eq!(
        spec.fields.iter().map(FieldName::as_str).collect::<Vec<_>>(),
        ["network.bytes"],
        "one input value per distinct field"
    );
    let key = ViewKey { window: None, group: vec![s("h")] };
    let (a, b, null) = (vec![ViewValue::Int(10)], vec![ViewValue::Int(4)], vec![ViewValue::Null]);
    let m = spec.measures(&key, &[(&null, 2), (&b, 1), (&a, 3)]);
    assert_eq!(
        m,
        vec![
            ViewValue::Int(6),
            ViewValue::Int(2),
            ViewValue::Int(34),
            ViewValue::Float(F64(8.5)),
            ViewValue::Int(4),
            ViewValue::Int(10)
        ]
    );
    // Only nulls: a count, no numbers.
    let m = spec.measures(&key, &[(&null, 2)]);
    assert_eq!(
        m,
        vec![
            ViewValue::Int(2),
            ViewValue::Int(0),
            ViewValue::Int(0),
            ViewValue::Null,
            ViewValue::Null,
            ViewValue::Null
        ]
    );
    // Overflowing integer sums become floats rather than wrapping.
    let big = vec![ViewValue::Int(i64::MAX)];
    assert!(matches!(spec.measures(&key, &[(&big, 2)])[2], ViewValue::Float(_)));
}

#[test]
fn a_window_closes_one_watermark_step_after_its_end_and_keeps_its_inputs_until_then() {
    let spec = spec("{group_by: [host.name], window: {size: 1m}, measures: [{name: n, fn: count}]}");
    let mut v = view(&spec);
    let mut out = OperatorOutput::default();
    v.process_events(batch(&[("a", None, 1_000), ("a", None, 2_000), ("b", None, 61_000)]), &mut out);
    // One update per key and input in an epoch: `a`'s two records are one update of +2.
    assert_eq!(out.view.updates.iter().map(|u| u.diff).collect::<Vec<_>>(), vec![2, 1]);
    assert_eq!(out.consumed, 3);
    assert_eq!(v.live_keys(), 2);
    let mut out = OperatorOutput::default();
    // The watermark passes the first window's end: records of this epoch may still be in it.
    v.advance(60_000, &mut out);
    assert!(out.view.is_empty());
    // The next step closes it: its inputs are retracted in one update (multiplicity 2).
    v.advance(70_000, &mut out);
    let key = ViewKey { window: Some((0, 60_000)), group: vec![s("a")] };
    assert_eq!(out.view.updates, vec![ViewUpdate { key: key.clone(), input: vec![], diff: -2 }]);
    assert_eq!(out.view.closed, vec![key]);
    assert_eq!(v.live_keys(), 1);
}

#[test]
fn views_without_a_window_never_close() {
    let spec = spec("{group_by: [host.name], measures: [{name: n, fn: count}]}");
    let mut v = view(&spec);
    let mut out = OperatorOutput::default();
    v.process_events(batch(&[("a", None, 1_000)]), &mut out);
    v.advance(i64::MAX - 1, &mut out);
    v.advance(i64::MAX, &mut out);
    assert_eq!(out.view.updates.len(), 1);
    assert!(out.view.closed.is_empty());
    assert_eq!(v.live_keys(), 1);
}

#[test]
fn state_moves_between_worker_counts_by_key_group_and_is_re_fed_after_a_restore() {
    let spec = spec("{group_by: [host.name], window: {size: 3m, slide: 1m}, measures: [{name: d, fn: count_distinct, field: network.bytes}]}");
    let mut one = view(&spec);
    let mut out = OperatorOutput::default();
    let events: Vec<(String, Option<i64>, i64)> =
        (0..50).map(|i| (format!("h{}", i % 7), Some(i % 3), i * 1_000)).collect();
    let refs: Vec<(&str, Option<i64>, i64)> = events.iter().map(|(h, n, t)| (h.as_str(), *n, *t)).collect();
    one.process_events(batch(&refs), &mut out);
    one.advance(30_000, &mut out);
    // Restored onto two workers: each gets its own key groups; together they hold it all.
    let mut halves: Vec<View> = (0..2)
        .map(|w| {
            let mut v = view(&spec);
            v.owned = (0..KEY_GROUPS).map(|g| ward_engine::key_groups::worker_for(g, 2) == w).collect();
            v
        })
        .collect();
    for g in 0..KEY_GROUPS {
        let bytes = one.snapshot(g).unwrap();
        if bytes.is_empty() {
            continue;
        }
        let owner = ward_engine::key_groups::worker_for(g, 2);
        halves[owner].restore(g, &bytes).unwrap();
    }
    assert!(halves.iter().all(|h| h.live_keys() > 0));
    assert_eq!(halves.iter().map(View::live_keys).sum::<usize>(), one.live_keys());
    assert!(halves.iter().all(|h| h.watermark == 30_000), "the watermark comes back with the state");
    // The re-feed is the whole state: every input with its multiplicity.
    let mut refed = Vec::new();
    for h in &mut halves {
        let mut o = OperatorOutput::default();
        h.restored(&mut o);
        refed.extend(o.view.updates);
    }
    let total = |u: &[ViewUpdate]| u.iter().map(|u| u.diff).sum::<i64>();
    assert_eq!(total(&refed), total(&out.view.updates));
    assert_eq!(total(&refed), 150, "50 events in 3 windows each");
}

#[test]
fn routers_name_one_key_per_window_and_alerts_group_by_their_fields() {
    let spec = spec("{group_by: [rule.id], window: {size: 2m, slide: 1m}, measures: [{name: n, fn: count}]}");
    let mut r = ViewRouter { spec: spec.clone(), windows: Vec::new(), group: Vec::new() };
    let alert = crate::testing::alert(1, "r1", "high", 90_000);
    let mut keys = Vec::new();
    assert_eq!(r.route(RecordRef::Alert(&alert), &mut keys), Route::Keyed);
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], key_hash(&ViewKey { window: Some((0, 120_000)), group: vec![s("r1")] }));
    let mut v = view(&spec);
    let mut out = OperatorOutput::default();
    v.process_alert(alert, true, &mut out);
    assert_eq!(out.consumed, 1);
    assert_eq!(out.view.updates.len(), 2);
}

#[test]
fn bad_views_say_what_is_wrong() {
    let err = |yaml: &str| config(yaml).compile("v").unwrap_err().to_string();
    assert!(err("{measures: []}").contains("`measures` is empty"));
    assert!(err("{measures: [{name: a, fn: count}, {name: a, fn: count}]}").contains("unique"));
    assert!(err("{measures: [{name: a, fn: count, field: x}]}").contains("takes no `field`"));
    assert!(err("{measures: [{name: a, fn: max}]}").contains("needs a `field`"));
    assert!(err("{measures: [{name: a, fn: count}], window: {size: 1h, slide: 1ms}}").contains("that many windows"));
    assert!(err("{measures: [{name: a, fn: count}], window: {size: 1m, slide: 2m}}").contains("must divide"));
    assert!(err("{measures: [{name: a, fn: count}], top: {k: 0, by: a}}").contains("`top.k`"));
}

fn case(kind: ward_engine::case::CaseEventKind, priority: &str, t: i64, tta: Option<i64>) -> CaseRecord {
    CaseRecord {
        kind,
        case_id: format!("c-{priority}-{t}"),
        priority: priority.into(),
        score: 70.0,
        entity: vec![("host.name".into(), "web-1".into())],
        opened_ms: t - 1_000,
        time_ms: t,
        sla: None,
        deadline_ms: None,
        tta_ms: tta,
        ttc_ms: None,
        alert_id: None,
        rule_id: Some("r1".into()),
        alerts: 1,
    }
}

#[test]
fn case_records_feed_mtta_by_priority_through_where() {
    use ward_engine::case::CaseEventKind::{Acknowledged, Joined};
    let spec = spec(
        "{group_by: [priority], window: {size: 1d}, where: {kind: case.acknowledged}, \
         measures: [{name: mtta_ms, fn: avg, field: tta_ms}, {name: hosts, fn: count_distinct, field: host.name}]}",
    );
    let mut r = ViewRouter { spec: spec.clone(), windows: Vec::new(), group: Vec::new() };
    let mut keys = Vec::new();
    let joined = case(Joined, "P1", 5_000, Some(4_000));
    assert_eq!(r.route(RecordRef::Case(&joined), &mut keys), Route::Drop, "left out by `where`");
    assert!(keys.is_empty());
    let mut v = view(&spec);
    let mut out = OperatorOutput::default();
    for c in [case(Acknowledged, "P1", 5_000, Some(4_000)), case(Acknowledged, "P1", 9_000, Some(8_000))] {
        keys.clear();
        assert_eq!(r.route(RecordRef::Case(&c), &mut keys), Route::Keyed);
        v.process_case(c, true, &mut out);
    }
    assert_eq!(out.consumed, 2);
    let key = ViewKey { window: Some((0, 86_400_000)), group: vec![s("P1")] };
    let inputs: Vec<(&Vec<ViewValue>, isize)> = out.view.updates.iter().map(|u| (&u.input, u.diff as isize)).collect();
    assert!(out.view.updates.iter().all(|u| u.key == key));
    assert_eq!(spec.measures(&key, &inputs), vec![ViewValue::Float(F64(6_000.0)), ViewValue::Int(1)]);
}

#[test]
fn where_compares_events_and_alerts_by_value() {
    let by_host = spec("{where: {host.name: [a, b], network.bytes: 5}, measures: [{name: n, fn: count}]}");
    let b = batch(&[("a", Some(5), 1), ("b", Some(6), 2), ("c", Some(5), 3), ("b", None, 4)]);
    let kept: Vec<usize> =
        (0..b.len()).filter(|row| passes(&by_host.filter, RecordRef::Event { batch: &b, row: *row })).collect();
    assert_eq!(kept, vec![0], "strings and numbers, every field must match");
    let by_level = spec("{where: {rule.level: [high, critical]}, measures: [{name: n, fn: count}]}");
    assert!(passes(&by_level.filter, RecordRef::Alert(&crate::testing::alert(1, "r1", "high", 0))));
    assert!(!passes(&by_level.filter, RecordRef::Alert(&crate::testing::alert(1, "r1", "low", 0))));
    let err = config("{where: {kind: []}, measures: [{name: n, fn: count}]}").compile("v").unwrap_err().to_string();
    assert!(err.contains("`where.kind`"), "{err}");
}

#[test]
fn differences_add_and_remove_rows_of_the_current_state() {
    // Listening ports per host from osquery-like changes: +1 a port opened, -1 it closed.
    let spec = spec(
        "{group_by: [host.name], diff: ward.diff, \
         measures: [{name: ports, fn: count_distinct, field: port}, {name: rows, fn: count}]}",
    );
    let change = |id: u64, host: &str, port: &str, d: &str| {
        let mut a = crate::testing::alert(id, "r", "low", id as i64);
        a.fields =
            vec![("host.name".into(), host.into()), ("port".into(), port.into()), ("ward.diff".into(), d.into())];
        a
    };
    let mut v = view(&spec);
    let mut out = OperatorOutput::default();
    for a in [change(1, "web-1", "22", "1"), change(2, "web-1", "4444", "1"), change(3, "web-1", "22", "-1")] {
        v.process_alert(a, true, &mut out);
    }
    let key = ViewKey { window: None, group: vec![s("web-1")] };
    let inputs: Vec<(&Vec<ViewValue>, isize)> =
        out.view.updates.iter().map(|u| (&u.input, u.diff as isize)).filter(|(_, n)| *n != 0).collect();
    assert_eq!(spec.measures(&key, &inputs), vec![ViewValue::Int(1), ViewValue::Int(1)], "port 22 closed again");
    assert_eq!(v.live_keys(), 1);
    // The last port closes: nothing is held for the host any more.
    v.process_alert(change(4, "web-1", "4444", "-1"), true, &mut out);
    assert_eq!(v.live_keys(), 0);
    // Not a difference: left out (the router drops it, counted as filtered).
    let mut r = ViewRouter { spec: spec.clone(), windows: Vec::new(), group: Vec::new() };
    let mut keys = Vec::new();
    for d in ["0", "x", "", "2000000"] {
        assert_eq!(r.route(RecordRef::Alert(&change(5, "web-1", "80", d)), &mut keys), Route::Drop, "{d:?}");
    }
    assert_eq!(r.route(RecordRef::Alert(&change(5, "web-1", "80", "-1")), &mut keys), Route::Keyed);
}
