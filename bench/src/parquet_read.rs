//! The `parquet` source alone, on one thread: events/s reading back what the parquet sink
//! wrote, with every column or with a projection (the fields a rule set reads).

use std::sync::Arc;
use std::time::Instant;

use ward_connectors::sources::parquet::ParquetSourceConfig;
use ward_engine::admin::AdminRoutes;
use ward_engine::clock::EpochClock;
use ward_engine::component::{SourcePoll, WorkerContext};
use ward_engine::metrics::Metrics;
use ward_engine::registry::{BuildContext, Built, ComponentConfig};
use ward_engine::resources::Resources;

/// Reads every event of `dir` once per projection; prints events/s per projection.
pub fn run(dir: &str, fields: &[String], repeat: usize) -> anyhow::Result<()> {
    let projections: Vec<Option<Vec<String>>> = vec![None, Some(fields.to_vec())];
    for projection in projections {
        let mut best = f64::MAX;
        let mut events = 0;
        for _ in 0..repeat.max(1) {
            let (n, secs) = read_all(dir, projection.clone())?;
            events = n;
            best = best.min(secs);
        }
        let what = match &projection {
            None => "every column".to_string(),
            Some(f) => format!("{} fields", f.len()),
        };
        println!(
            "parquet source, {what}: {events} events in {best:.2}s = {:.0} events/s on one thread ({:.3} µs/event)",
            events as f64 / best,
            best * 1e6 / events.max(1) as f64
        );
    }
    Ok(())
}

fn read_all(dir: &str, fields: Option<Vec<String>>) -> anyhow::Result<(u64, f64)> {
    let mut config = serde_json::json!({ "path": dir });
    if let Some(f) = fields {
        config["fields"] = f.into();
    }
    let config: ParquetSourceConfig = serde_json::from_value(config)?;
    let resources = Resources::new(std::env::current_dir()?);
    let Built::Source(factory) = config.build(&BuildContext {
        component_id: "history",
        resources: &resources,
        admin: &AdminRoutes::default(),
        contexts: &Default::default(),
        io: &Default::default(),
        downstream_alert_keys: &[],
        storage: &Default::default(),
    })?
    else {
        anyhow::bail!("not a source");
    };
    let mut source = factory.create(&WorkerContext {
        component_id: "history".into(),
        worker_index: 0,
        workers: 1,
        processes: 1,
        resources,
        metrics: Metrics::new().component("history"),
        clock: Arc::new(EpochClock::new()),
        resumed_from: None,
        checkpointing: false,
        switches: None,
    })?;
    let started = Instant::now();
    let mut events = 0u64;
    loop {
        match source.poll(1024)? {
            SourcePoll::Batch(b) | SourcePoll::Both(b, _) => events += b.len() as u64,
            SourcePoll::Quarantine(_) | SourcePoll::Pending(_) => {}
            SourcePoll::Done => break,
        }
    }
    Ok((events, started.elapsed().as_secs_f64()))
}
