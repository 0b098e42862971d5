//! State per live key of the other stateful operators (dedup, suppress, sla), built from their
//! configs as a pipeline would: N distinct live keys each, bytes counted by the harness's
//! allocator, and records/s through the operator on one thread.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ward_engine::admin::AdminRoutes;
use ward_engine::alert::Alert;
use ward_engine::batch::{EventBatch, Key, Slot, Value};
use ward_engine::clock::EpochClock;
use ward_engine::component::{OperatorOutput, WorkerContext};
use ward_engine::fields::ids;
use ward_engine::keyed::KeyedOperator;
use ward_engine::metrics::Metrics;
use ward_engine::registry::{BuildContext, Built, ComponentConfig};
use ward_engine::resources::Resources;

use crate::ALLOCATED_BYTES as ALLOCATED;

const T0: i64 = 1_767_261_600_000;
/// Inputs spread over 8 minutes of event time; every operator keeps them live longer.
const SPAN_MS: i64 = 8 * 60_000;

fn operator<C: ComponentConfig>(config: serde_json::Value) -> anyhow::Result<Box<dyn KeyedOperator>> {
    let config: C = serde_json::from_value(config)?;
    let resources = Resources::new(crate::repo());
    let admin = AdminRoutes::default();
    let Built::Keyed(factory) = config.build(&BuildContext {
        component_id: C::TYPE,
        resources: &resources,
        admin: &admin,
        contexts: &Default::default(),
        io: &Default::default(),
        downstream_alert_keys: &[],
        storage: &Default::default(),
    })?
    else {
        anyhow::bail!("{} is not a keyed operator", C::TYPE);
    };
    factory.operator(&WorkerContext {
        component_id: C::TYPE.into(),
        worker_index: 0,
        workers: 1,
        processes: 1,
        resources,
        metrics: Metrics::new().component(C::TYPE),
        clock: Arc::new(EpochClock::new()),
        resumed_from: None,
        checkpointing: false,
        switches: None,
    })
}

fn alert(n: u64, total: u64) -> Alert {
    let t = T0 + (n as i64 * SPAN_MS) / total as i64;
    let mut a = crate::correlate::alert(n, n, t);
    std::sync::Arc::make_mut(&mut a.rule).level = "high".into();
    a.fields.clear();
    let host = format!("host-{n:07}");
    a.event = Some(ward_engine::alert::EventJson::from_value(
        &serde_json::json!({"host.name": host, "host.id": host, "user.name": "u"}),
    ));
    a
}

/// Events with distinct `event.id`s, in batches of 1024.
fn events(total: u64) -> Vec<EventBatch> {
    let mut batches = Vec::new();
    let mut b = EventBatch::new();
    for n in 0..total {
        let o = b.origin_index(&"bench".into(), &"0".into());
        let id = format!("{n:016x}");
        b.push_raw(o, n, id.as_bytes()).expect("small test records fit");
        let r = b.heap().push_str(&id);
        b.push_slot(Slot { key: Key::Core(ids::EVENT_ID), value: Value::Str(r) });
        b.push_slot(Slot {
            key: Key::Core(ids::TIMESTAMP),
            value: Value::Timestamp(T0 + (n as i64 * SPAN_MS) / total as i64),
        });
        if b.len() == 1024 {
            batches.push(std::mem::take(&mut b));
        }
    }
    if !b.is_empty() {
        batches.push(b);
    }
    batches
}

fn report(name: &str, what: &str, total: u64, op: &dyn KeyedOperator, heap: isize, secs: f64) {
    let live = op.live_keys().max(1);
    println!(
        "  {name:<8} {what:<44} {:>9.0} records/s  live keys {:>8}  {:>5.0} bytes/key",
        total as f64 / secs,
        live,
        heap as f64 / live as f64
    );
}

pub fn run(keys: u64) -> anyhow::Result<()> {
    println!("state per live key, {keys} keys, one thread (allocator count of the operator's state)");

    // State = what stays allocated once the inputs and outputs are dropped.
    let before = ALLOCATED.load(Ordering::Relaxed);
    let batches = events(keys);
    let mut dedup = operator::<ward_operators::dedup::DedupConfig>(serde_json::json!({"horizon": "10m"}))?;
    let mut out = OperatorOutput::default();
    let started = Instant::now();
    for b in batches {
        dedup.process_events(b, &mut out);
    }
    let secs = started.elapsed().as_secs_f64();
    drop(out);
    let heap = ALLOCATED.load(Ordering::Relaxed) - before;
    report("dedup", "distinct event.id, horizon 10m", keys, &*dedup, heap, secs);
    drop(dedup);

    for (name, what, config, advance) in [
        (
            "suppress",
            "distinct host.id, window 5m (open buckets)",
            serde_json::json!({"window": "5m"}),
            // Before the first bucket closes.
            T0,
        ),
        // Applies every input without reaching a deadline.
        ("sla", "distinct host.name (open cases, applied)", serde_json::json!({}), T0 + SPAN_MS),
    ] {
        let before = ALLOCATED.load(Ordering::Relaxed);
        let alerts: Vec<Alert> = (0..keys).map(|n| alert(n, keys)).collect();
        let mut op = if name == "sla" {
            operator::<ward_operators::sla::SlaConfig>(config)?
        } else {
            operator::<ward_operators::suppress::SuppressConfig>(config)?
        };
        let mut out = OperatorOutput::default();
        let started = Instant::now();
        for a in alerts {
            op.process_alert(a, true, &mut out);
        }
        op.advance(advance, &mut out);
        let secs = started.elapsed().as_secs_f64();
        drop(out);
        let heap = ALLOCATED.load(Ordering::Relaxed) - before;
        report(name, what, keys, &*op, heap, secs);
    }
    Ok(())
}
