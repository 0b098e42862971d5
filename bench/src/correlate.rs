//! Correlation state and throughput: an `event_count` rule over pre-matched alerts with up to
//! 1,000,000 distinct live group-by keys. Reports operator state bytes per key (counted by the
//! harness's allocator), resident memory, and alerts/s through routing (key computation) and the window
//! operator with the watermark advancing as a source's would.

use std::sync::atomic::Ordering;

use crate::ALLOCATED_BYTES as ALLOCATED;
use std::time::Instant;

use ward_engine::alert::{Alert, AlertOrigin, AlertRule};
use ward_engine::component::OperatorOutput;
use ward_engine::time::WATERMARK_END;
use ward_operators::correlate::window::Windows;
use ward_operators::correlate::{route_alert, CorrelationRules};
use ward_operators::sigma::RuleFile;

const RULES: &str = "title: Failed logon\nid: failed\nlogsource: {product: windows}\ndetection: {sel: {EventID: 4625}, condition: sel}\n---\n\
title: Brute force\nid: brute\ncorrelation:\n  type: event_count\n  rules: [failed]\n  group-by: [TargetUserName]\n  timespan: 10m\n  condition: {gte: 5}\n";

const T0: i64 = 1_767_261_600_000;

/// A pre-matched `failed` alert for user `key` at `t`.
pub fn alert(n: u64, key: u64, t: i64) -> Alert {
    Alert {
        alert_id: format!("{:032x}", n + 1),
        rule: AlertRule {
            id: "failed".into(),
            title: "Failed logon".into(),
            level: "low".into(),
            status: String::new(),
            tags: vec![],
            techniques: vec![],
        }
        .into(),
        priority: 4,
        ruleset_version: "v".into(),
        detector: "detect".into(),
        matches: vec![],
        event_id: None,
        event_time_ms: Some(t),
        origin: AlertOrigin { source: "bench".into(), partition: "0".into(), offset: n },
        event: None,
        fields: vec![("TargetUserName".into(), format!("user-{key:07}"))],
        correlation: None,
        suppression: None,
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

pub fn run(keys: u64, alerts_per_key: u64) -> anyhow::Result<()> {
    let rules = CorrelationRules::load(&[RuleFile::new("bench.yml", "bench.yml", RULES)]);
    anyhow::ensure!(rules.set.rejected.is_empty(), "bench rules rejected: {:?}", rules.set.rejected);
    let total = keys * alerts_per_key;
    // Alerts spread over 8 minutes of event time: every key stays live (timespan 10 minutes).
    let span = 8 * 60_000;
    eprintln!("building {total} alerts over {keys} keys ...");
    let alerts: Vec<Alert> = (0..total)
        .map(|n| {
            // Every key gets `alerts_per_key` alerts, keys interleaved.
            let key = n % keys;
            alert(n, key, T0 + (n as i64 * span) / total as i64)
        })
        .collect();

    let rss_before = rss_bytes();
    let heap_before = ALLOCATED.load(Ordering::Relaxed);
    let mut windows = Windows::new(rules.set.clone(), rules.version.clone(), "bench".into(), Windows::all_groups());
    let mut out = OperatorOutput::default();
    let mut keys_buf = Vec::new();
    let mut scratch = String::new();
    let started = Instant::now();
    for (i, a) in alerts.iter().enumerate() {
        keys_buf.clear();
        route_alert(&rules.set, a, &mut keys_buf, &mut scratch);
        windows.add(a);
        if i % 4096 == 4095 {
            // A source 2 minutes out of order: the watermark trails the newest alert.
            windows.advance(a.event_time_ms.unwrap_or_default() - 120_000, &mut out);
        }
    }
    let elapsed = started.elapsed();
    let live = windows.live_keys();
    let heap = ALLOCATED.load(Ordering::Relaxed) - heap_before;
    let rss = rss_bytes().saturating_sub(rss_before);
    println!(
        "correlation: event_count (gte 5 in 10m, group-by TargetUserName), {total} pre-matched alerts, {keys} keys"
    );
    println!(
        "  throughput: {:.0} alerts/s on one thread (routing + windows + watermark), {:.0} ns/alert",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / total as f64
    );
    println!(
        "  live keys {live}: operator state {:.1} MB = {:.0} bytes/key (allocator count); RSS grew {:.1} MB = {:.0} bytes/key",
        heap as f64 / 1e6,
        heap as f64 / live.max(1) as f64,
        rss as f64 / 1e6,
        rss as f64 / live.max(1) as f64
    );
    let fired_before_end = out.alerts.len();
    let started = Instant::now();
    windows.advance(WATERMARK_END, &mut out);
    println!(
        "  end of input: {} correlation alerts ({} before the end), state released in {:.2}s, live keys {}",
        out.alerts.len(),
        fired_before_end,
        started.elapsed().as_secs_f64(),
        windows.live_keys()
    );
    Ok(())
}
