//! Correlation on hand-built alert sequences: one test per type, the bucket edge, out-of-order
//! input, chains (brute force then privilege change), state release, snapshot/restore.

use std::sync::Arc;

use ward_engine::alert::Alert;
use ward_engine::component::OperatorOutput;
use ward_engine::key_groups::KEY_GROUPS;
use ward_engine::time::WATERMARK_END;

use super::window::Windows;
use super::CorrelationRules;
use crate::sigma::correlation::CorrelationSet;
use crate::sigma::RuleFile;

const MIN: i64 = 60_000;
/// 2026-01-01T09:58:00Z: two minutes before a 10:00 bucket edge.
const T0: i64 = 1_767_261_480_000;

fn rules(yaml: &str) -> Arc<CorrelationSet> {
    let base = "title: Failed logon\nid: failed\nname: failed_logon\nlogsource: {product: windows}\ndetection: {sel: {EventID: 4625}, condition: sel}\n---\n\
title: Group add\nid: group-add\nname: group_add\nlogsource: {product: windows}\ndetection: {sel: {EventID: 4732}, condition: sel}\n---\n\
title: Big transfer\nid: transfer\nlogsource: {product: zeek}\ndetection: {sel: {service: x}, condition: sel}\n---\n";
    let files = vec![RuleFile::new("t.yml", "t.yml", format!("{base}{yaml}"))];
    let loaded = CorrelationRules::load(&files);
    assert!(loaded.set.rejected.is_empty(), "{:?}", loaded.set.rejected);
    loaded.set
}

fn alert(rule: &str, n: u64, t: i64, fields: &[(&str, &str)]) -> Alert {
    let mut a = crate::testing::alert(n + 1, rule, "low", t);
    a.origin.offset = n;
    a.fields = fields.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    a
}

/// Feeds alerts in the given order, advancing the watermark to `newest - lag` after each (as a
/// source with bounded out-of-orderness would), then to the end. Returns the correlation
/// alerts sorted by id, and the alerts that passed through.
fn run(set: &Arc<CorrelationSet>, alerts: &[Alert], lag: i64) -> Vec<Alert> {
    let mut w = Windows::new(set.clone(), "v".into(), "c".into(), Windows::all_groups());
    let mut out = OperatorOutput::default();
    let mut newest = i64::MIN;
    for a in alerts {
        w.add(a);
        newest = newest.max(a.event_time_ms.unwrap());
        w.advance(newest - lag, &mut out);
    }
    w.advance(WATERMARK_END, &mut out);
    assert_eq!(w.live_keys(), 0, "state is released at the end");
    let mut v = out.alerts;
    v.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
    v
}

const BRUTE: &str = "title: Brute force\nid: brute\nname: brute_force\ncorrelation:\n  type: event_count\n  rules: [failed_logon]\n  group-by: [TargetUserName]\n  timespan: 10m\n  condition: {gte: 5}\nlevel: high\n";

#[test]
fn event_count_fires_on_a_burst_straddling_a_bucket_edge() {
    let set = rules(BRUTE);
    // 09:58:00 … 10:02:00: five failures 1 minute apart, across the 10:00 edge.
    let alerts: Vec<Alert> =
        (0..5).map(|i| alert("failed", i, T0 + i as i64 * MIN, &[("TargetUserName", "bob")])).collect();
    let out = run(&set, &alerts, 0);
    assert_eq!(out.len(), 1);
    let c = out[0].correlation.as_ref().unwrap();
    assert_eq!(c.kind, "event_count");
    assert_eq!(c.value, 5.0);
    assert_eq!(c.window_start_ms, T0);
    assert_eq!(c.window_end_ms, T0 + 4 * MIN);
    assert_eq!(c.group_by, vec![("TargetUserName".to_string(), "bob".to_string())]);
    assert_eq!(c.contributing.len(), 5);
    assert_eq!(out[0].rule.id, "brute");
    assert_eq!(out[0].priority, 2);
}

#[test]
fn event_count_needs_the_events_within_the_timespan_and_groups_apart() {
    let set = rules(BRUTE);
    // Four for bob, four for alice, and bob's fifth 11 minutes after his first.
    let mut alerts = Vec::new();
    for i in 0..4 {
        alerts.push(alert("failed", i, T0 + i as i64 * MIN, &[("TargetUserName", "bob")]));
        alerts.push(alert("failed", 10 + i, T0 + i as i64 * MIN, &[("TargetUserName", "alice")]));
    }
    alerts.push(alert("failed", 20, T0 + 11 * MIN, &[("TargetUserName", "bob")]));
    assert!(run(&set, &alerts, 0).is_empty());
    // Exactly at the timespan boundary the first drops out: (t - 10m, t].
    let mut edge: Vec<Alert> =
        (0..4).map(|i| alert("failed", i, T0 + i as i64 * MIN, &[("TargetUserName", "bob")])).collect();
    edge.push(alert("failed", 9, T0 + 10 * MIN, &[("TargetUserName", "bob")]));
    assert!(run(&set, &edge, 0).is_empty());
    edge.last_mut().unwrap().event_time_ms = Some(T0 + 10 * MIN - 1);
    assert_eq!(run(&set, &edge, 0).len(), 1);
}

#[test]
fn out_of_order_input_within_the_bound_gives_the_same_alerts() {
    let set = rules(BRUTE);
    let mut alerts: Vec<Alert> = (0..12)
        .map(|i| alert("failed", i, T0 + (i as i64 % 7) * 20_000 + i as i64, &[("TargetUserName", "bob")]))
        .collect();
    let in_order = {
        let mut a = alerts.clone();
        a.sort_by_key(|x| x.event_time_ms);
        run(&set, &a, 0)
    };
    alerts.reverse();
    // Two minutes of allowed disorder covers this shuffle.
    let shuffled = run(&set, &alerts, 2 * MIN);
    assert_eq!(in_order.len(), 2);
    assert_eq!(in_order, shuffled);
}

#[test]
fn value_count_counts_distinct_values() {
    let set = rules(
        "title: Spray\nid: spray\ncorrelation:\n  type: value_count\n  rules: [failed]\n  group-by: [IpAddress]\n  timespan: 5m\n  condition: {gte: 3, field: TargetUserName}\n",
    );
    let users = ["a", "a", "b", "b", "c"];
    let alerts: Vec<Alert> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            alert("failed", i as u64, T0 + i as i64 * 1000, &[("IpAddress", "10.0.0.9"), ("TargetUserName", u)])
        })
        .collect();
    let out = run(&set, &alerts, 0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].correlation.as_ref().unwrap().value, 3.0);
    assert_eq!(out[0].correlation.as_ref().unwrap().window_end_ms, T0 + 4000);
}

#[test]
fn value_sum_avg_and_percentile() {
    let mk = |kind: &str, cond: &str| {
        rules(&format!(
            "title: Exfil\nid: exfil\ncorrelation:\n  type: {kind}\n  rules: [transfer]\n  group-by: [host]\n  timespan: 1h\n  condition: {{{cond}, field: bytes}}\n"
        ))
    };
    let sizes = [10.0, 20.0, 30.0, 40.0];
    let alerts: Vec<Alert> = sizes
        .iter()
        .enumerate()
        .map(|(i, b)| alert("transfer", i as u64, T0 + i as i64 * MIN, &[("host", "h1"), ("bytes", &b.to_string())]))
        .collect();
    let sum = run(&mk("value_sum", "gt: 50"), &alerts, 0);
    assert_eq!(sum.len(), 1);
    assert_eq!(sum[0].correlation.as_ref().unwrap().value, 60.0);
    let avg = run(&mk("value_avg", "gte: 25"), &alerts, 0);
    assert_eq!(avg[0].correlation.as_ref().unwrap().value, 25.0);
    let p = rules(
        "title: P\nid: p\ncorrelation:\n  type: value_percentile\n  rules: [transfer]\n  group-by: [host]\n  timespan: 1h\n  condition: {gte: 30, field: bytes, percentile: 75}\n",
    );
    // Fires at 30 (p75 of 10, 20, 30), which spends those; then 40 alone fires again.
    let mut values: Vec<f64> = run(&p, &alerts, 0).iter().map(|a| a.correlation.as_ref().unwrap().value).collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(values, vec![30.0, 40.0]);
    // Ranges: gt 20 and lte 30 on the sum: 10+20 fires, then 30 alone; 40 is above the range.
    let range = run(&mk("value_sum", "gt: 20, lte: 30"), &alerts, 0);
    let values: Vec<f64> = range.iter().map(|a| a.correlation.as_ref().unwrap().value).collect();
    assert_eq!(values, vec![30.0, 30.0]);
}

const TEMPORAL: &str = "title: Both\nid: both\ncorrelation:\n  type: TYPE\n  rules: [failed, group-add]\n  group-by: [user]\n  timespan: 10m\n";

#[test]
fn temporal_needs_all_rules_in_any_order() {
    let set = rules(&TEMPORAL.replace("TYPE", "temporal"));
    let a = alert("failed", 1, T0, &[("user", "u")]);
    let b = alert("group-add", 2, T0 + MIN, &[("user", "u")]);
    assert_eq!(run(&set, &[a.clone(), b.clone()], 0).len(), 1);
    let mut b_first = b.clone();
    b_first.event_time_ms = Some(T0 - MIN);
    assert_eq!(run(&set, &[b_first, a.clone()], 0).len(), 1);
    assert!(run(&set, &[a], 0).is_empty());
}

#[test]
fn temporal_ordered_needs_the_order() {
    let set = rules(&TEMPORAL.replace("TYPE", "temporal_ordered"));
    let a = alert("failed", 1, T0, &[("user", "u")]);
    let b = alert("group-add", 2, T0 + MIN, &[("user", "u")]);
    let out = run(&set, &[a.clone(), b.clone()], 0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].correlation.as_ref().unwrap().contributing, vec![a.alert_id.clone(), b.alert_id.clone()]);
    let mut late_a = a.clone();
    late_a.event_time_ms = Some(T0 + 2 * MIN);
    assert!(run(&set, &[b, late_a], 0).is_empty());
}

#[test]
fn brute_force_then_privilege_change_is_a_chained_sequence() {
    let seq = "---\ntitle: Brute force then privilege change\nid: bf-priv\ncorrelation:\n  type: temporal_ordered\n  rules: [brute_force, group_add]\n  group-by: [TargetUserName]\n  aliases:\n    TargetUserName:\n      brute_force: TargetUserName\n      group_add: MemberName\n  timespan: 15m\nlevel: critical\n";
    let set = rules(&format!("{BRUTE}{seq}"));
    let mut alerts: Vec<Alert> =
        (0..6).map(|i| alert("failed", i, T0 + i as i64 * 30_000, &[("TargetUserName", "svc")])).collect();
    // Privilege change for the same account 8 minutes later; one for another account too.
    alerts.push(alert("group-add", 50, T0 + 8 * MIN, &[("MemberName", "svc")]));
    alerts.push(alert("group-add", 51, T0 + 8 * MIN, &[("MemberName", "other")]));
    let out = run(&set, &alerts, MIN);
    // `brute` is referenced by the sequence without `generate`: absorbed, not emitted.
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].rule.id, "bf-priv");
    let c = out[0].correlation.as_ref().unwrap();
    assert_eq!(c.group_by, vec![("TargetUserName".to_string(), "svc".to_string())]);
    assert_eq!(c.contributing.len(), 2);
    // Too late: the privilege change 20 minutes after the burst does not complete it.
    let mut late = alerts.clone();
    late[6].event_time_ms = Some(T0 + 25 * MIN);
    assert!(run(&set, &late, MIN).is_empty());
}

#[test]
fn generate_true_keeps_the_base_alerts_and_unrelated_rules_pass() {
    let set = rules(&BRUTE.replace("level: high", "generate: true\nlevel: high"));
    assert!(set.absorbed.is_empty());
    let set = rules(BRUTE);
    assert!(set.absorbed.contains("failed"));
    assert!(!set.absorbed.contains("group-add"));
}

#[test]
fn rejections_have_reasons() {
    let bad = [
        ("correlation:\n  type: event_count\n  rules: [nope]\n  group-by: [u]\n  timespan: 5m\n  condition: {gte: 2}\n", "no loaded rule"),
        ("correlation:\n  type: event_count\n  rules: [failed]\n  group-by: [u]\n  timespan: 5m\n  condition: {gte: 2}\n  window: tumbling\n", "sliding"),
        ("correlation:\n  type: value_count\n  rules: [failed]\n  group-by: [u]\n  timespan: 5m\n  condition: {gte: 2}\n", "condition.field"),
    ];
    for (body, why) in bad {
        let text = format!("title: Failed\nid: failed\nlogsource: {{product: windows}}\ndetection: {{sel: {{EventID: 1}}, condition: sel}}\n---\ntitle: Bad\nid: bad\n{body}");
        let loaded = CorrelationRules::load(&[RuleFile::new("b.yml", "b.yml", text)]);
        assert_eq!(loaded.set.rejected.len(), 1, "{body}");
        assert!(loaded.set.rejected[0].3.contains(why), "{:?} should mention {why}", loaded.set.rejected[0]);
    }
}

#[test]
fn state_is_released_once_the_watermark_passes_the_window() {
    let set = rules(BRUTE);
    let mut w = Windows::new(set, "v".into(), "c".into(), Windows::all_groups());
    let mut out = OperatorOutput::default();
    for i in 0..1000u64 {
        w.add(&alert("failed", i, T0 + i as i64, &[("TargetUserName", &format!("user{i}"))]));
    }
    assert_eq!(w.live_keys(), 1000);
    w.advance(T0 + 5 * MIN, &mut out);
    assert_eq!(w.live_keys(), 1000, "windows still open");
    w.advance(T0 + 11 * MIN, &mut out);
    assert_eq!(w.live_keys(), 0);
    assert!(out.alerts.is_empty());
}

#[test]
fn snapshot_mid_stream_and_restore_continue_like_an_uninterrupted_run() {
    let seq = "---\ntitle: Seq\nid: seq\ncorrelation:\n  type: temporal_ordered\n  rules: [brute_force, group_add]\n  group-by: [TargetUserName]\n  aliases:\n    TargetUserName: {brute_force: TargetUserName, group_add: MemberName}\n  timespan: 15m\n";
    let set = rules(&format!("{BRUTE}{seq}"));
    let mut alerts = Vec::new();
    for u in 0..40u64 {
        let user = format!("u{u}");
        for i in 0..(3 + u % 5) {
            alerts.push(alert(
                "failed",
                u * 100 + i,
                T0 + (u as i64) * 7_000 + i as i64 * 40_000,
                &[("TargetUserName", &user)],
            ));
        }
        alerts.push(alert("group-add", u * 100 + 99, T0 + (u as i64) * 7_000 + 6 * MIN, &[("MemberName", &user)]));
    }
    alerts.sort_by_key(|a| a.event_time_ms);
    let expected = run(&set, &alerts, MIN);
    assert!(!expected.is_empty());
    for cut in [alerts.len() / 3, alerts.len() / 2, alerts.len() - 5] {
        let mut a = Windows::new(set.clone(), "v".into(), "c".into(), Windows::all_groups());
        let mut out = OperatorOutput::default();
        let mut newest = i64::MIN;
        for x in &alerts[..cut] {
            a.add(x);
            newest = newest.max(x.event_time_ms.unwrap());
            a.advance(newest - MIN, &mut out);
        }
        let all: Vec<u16> = (0..KEY_GROUPS).collect();
        let snapshots = a.snapshot_groups(&all).unwrap();
        let wm = a.watermark();
        drop(a);
        // Restore onto two "workers" owning halves of the key groups.
        let mut halves: Vec<Windows> = (0..2)
            .map(|w| {
                let owned = (0..KEY_GROUPS).map(|g| ward_engine::key_groups::worker_for(g, 2) == w).collect();
                Windows::new(set.clone(), "v".into(), "c".into(), owned)
            })
            .collect();
        for (g, bytes) in &snapshots {
            halves[ward_engine::key_groups::worker_for(*g, 2)].restore(*g, bytes).unwrap();
        }
        for h in &mut halves {
            h.advance(wm, &mut out);
        }
        for x in &alerts[cut..] {
            for h in &mut halves {
                h.add(x);
            }
            newest = newest.max(x.event_time_ms.unwrap());
            for h in &mut halves {
                h.advance(newest - MIN, &mut out);
            }
        }
        for h in &mut halves {
            h.advance(WATERMARK_END, &mut out);
        }
        let mut got = out.alerts;
        got.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        assert_eq!(got, expected, "cut at {cut}");
    }
}

#[test]
fn fingerprints_are_stable_across_loads() {
    // Restored state finds its rule by fingerprint, in another process: a rule with several
    // aliases (a hash map in the parsed rule) must fingerprint the same every time.
    let seq = "---\ntitle: Seq\nid: seq\ncorrelation:\n  type: temporal_ordered\n  rules: [brute_force, group_add]\n  group-by: [TargetUserName]\n  aliases:\n    TargetUserName:\n      brute_force: TargetUserName\n      group_add: MemberName\n      failed_logon: TargetUserName\n  timespan: 15m\n";
    let prints: std::collections::BTreeSet<Vec<u64>> =
        (0..20).map(|_| rules(&format!("{BRUTE}{seq}")).rules.iter().map(|c| c.fingerprint).collect()).collect();
    assert_eq!(prints.len(), 1, "{prints:?}");
}
