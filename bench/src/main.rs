//! Ward's benchmark harness.
//!
//! `ward-bench pipeline` runs generator → parse → normalize → enrich → Parquet through the
//! real engine with 1 and 2 workers and prints events/s and MB/s.
//! `ward-bench stages` times each stage alone on one thread over the same batches, to show
//! where the time goes.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod cluster;
mod correlate;
mod hostile;
mod packs;
mod parquet_read;
mod sigma;
mod state;

use clap::{Parser, Subcommand};
use ward_connectors::sinks::parquet::{ParquetSink, ParquetSinkConfig, PartitionBy};
use ward_connectors::sources::generator::{Generator, GeneratorConfig};
use ward_engine::batch::EventBatch;
use ward_engine::checkpoint::CheckpointConfig;
use ward_engine::component::{Operator, OperatorOutput, Payload, Sink, Source, SourcePoll};
use ward_engine::registry::Registry;
use ward_engine::resources::Resources;
use ward_engine::runtime::{run, RunOptions};
use ward_engine::spec::Spec;
use ward_operators::enrich::{EnrichConfig, Enricher, RiskWeights, ThreatIntelFile};
use ward_operators::normalize::{builtin, load_packs, Normalizer, Unmatched};
use ward_operators::parse::{syslog::SyslogOptions, Format, Parser as RecordParser};

/// Counts heap allocations (per event for each stage) and live heap bytes (state size).
struct CountingAlloc;
static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static ALLOCATED_BYTES: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        ALLOCATED_BYTES.fetch_sub(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size as isize - layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[derive(Parser)]
#[command(name = "ward-bench", about = "Ward benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole pipeline through the engine, per worker count.
    Pipeline {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
        workers: Vec<usize>,
        /// Repetitions per worker count (the best is reported, all are printed).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Also run with checkpoints at this interval (ms) and report the overhead.
        #[arg(long)]
        checkpoint_interval_ms: Option<u64>,
    },
    /// Each stage alone, on one thread.
    Stages {
        #[arg(long, default_value_t = 500_000)]
        count: u64,
        /// zstd level of the Parquet stage.
        #[arg(long, default_value_t = 3)]
        zstd_level: i32,
    },
    /// Correlation state and throughput: an event_count rule over pre-matched alerts.
    Correlate {
        /// Distinct live group-by keys.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Alerts per key (spread over 8 minutes of event time).
        #[arg(long, default_value_t = 2)]
        alerts_per_key: u64,
    },
    /// State per live key of dedup, suppress and sla.
    State {
        /// Distinct live keys per operator.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
    },
    /// The Sigma matcher: Ward vs rsigma-eval vs sigma-rust, and Ward with 100 … all rules.
    Sigma {
        /// Rule directory (default: the SigmaHQ Windows rules beside the repository).
        #[arg(long, default_value = "rules/sigmahq/rules/windows")]
        rules: String,
        /// Generator events for Ward's runs.
        #[arg(long, default_value_t = 300_000)]
        count: u64,
        /// Events for the side-by-side comparison (the others are much slower).
        #[arg(long, default_value_t = 20_000)]
        competitor_count: u64,
        /// Rule counts for Ward alone, comma-separated (`all` = every compilable rule).
        #[arg(long, value_delimiter = ',', value_parser = sigma::parse_rule_count,
              default_values_t = ["100".to_string(), "1000".to_string(), "all".to_string()])]
        sizes: Vec<String>,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Leave sigma-rust out of the side-by-side run (it takes minutes).
        #[arg(long)]
        no_sigma_rust: bool,
    },
    /// The parquet source alone (retro-hunts' reader), one thread: every column, and a
    /// projection of the fields a rule set reads.
    ParquetRead {
        /// The parquet sink's directory.
        #[arg(long)]
        events: String,
        /// The projected fields (default: what the SigmaHQ Windows process and logon rules read).
        #[arg(long, value_delimiter = ',', default_values_t = [
            "process.executable", "process.command_line", "process.parent.executable", "process.parent.command_line",
            "user.name", "host.name", "event.code", "event.provider", "winlog.channel", "source.ip",
            "destination.ip", "destination.port", "dns.question.name", "file.path",
        ].map(String::from))]
        fields: Vec<String>,
        #[arg(long, default_value_t = 2)]
        repeat: usize,
    },
    /// Pack detection: normalize with every built-in pack vs only the one that claims the
    /// events, per source (Windows shapes, cloud and network samples).
    Packs {
        #[arg(long, default_value_t = 200_000)]
        count: u64,
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
    /// The `ward` binary as a cluster of processes on 127.0.0.1: 1×2 vs 2×1 throughput, and the
    /// time from a restart after kill -9 to the first output.
    Cluster {
        /// The `ward` binary (a release build).
        #[arg(long)]
        ward: PathBuf,
        #[arg(long, default_value_t = 3_000_000)]
        count: u64,
        #[arg(long, default_value_t = 2)]
        repeat: usize,
    },
    /// Sigma matching time per byte on attacker-shaped events (quadratic-matching attacks).
    Hostile {
        /// Value sizes in bytes.
        #[arg(long, value_delimiter = ',', default_values_t = [1024usize, 102_400, 1_048_576])]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repository root")
}

fn registry() -> Registry {
    let mut r = Registry::default();
    ward_operators::register(&mut r);
    ward_connectors::register(&mut r);
    r
}

fn pipeline(count: u64, workers: &[usize], repeat: usize, checkpoint_ms: Option<u64>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let spec_path = repo().join("bench/specs/ingest.yaml");
    let text = std::fs::read_to_string(&spec_path)?;
    let out = dir.path().display().to_string();
    let vars = |name: &str| match name {
        "BENCH_EVENTS" => Some(count.to_string()),
        "BENCH_OUT" => Some(out.clone()),
        _ => std::env::var(name).ok(),
    };
    let resources = Resources::new(repo().join("bench/specs"));
    let mut spec =
        Spec::parse_with_vars(&spec_path, &text, resources, &registry(), &vars).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(ms) = checkpoint_ms {
        let mut config = CheckpointConfig::with_dir(&dir.path().join("chk").display().to_string());
        config.interval = std::time::Duration::from_millis(ms);
        spec.settings.checkpoint = Some(config);
    }
    match checkpoint_ms {
        None => println!("pipeline: generator -> parse -> normalize -> enrich -> parquet, {count} events"),
        Some(ms) => println!("the same with checkpoints every {ms} ms (Parquet exactly once: files close at each)"),
    }
    println!("{:>8} {:>14} {:>14} {:>10} {:>16}", "workers", "events/s", "per worker", "MB/s", "runs (events/s)");
    for &w in workers {
        let mut runs = Vec::new();
        let mut mb = 0.0;
        for _ in 0..repeat.max(1) {
            let _ = std::fs::remove_dir_all(dir.path().join("out"));
            let _ = std::fs::remove_dir_all(dir.path().join("chk"));
            let s = run(
                &spec,
                &RunOptions { workers: w, admin_listen: Some(String::new()), ..Default::default() },
                Arc::new(AtomicBool::new(false)),
            )?;
            assert!(s.components.iter().all(|c| c.ledger_balances()), "ledger must balance");
            let eps = s.events_per_second();
            if runs.iter().all(|r: &f64| eps > *r) {
                mb = s.bytes_read() as f64 / 1e6 / s.elapsed.as_secs_f64();
            }
            runs.push(eps);
        }
        let best = runs.iter().cloned().fold(0.0, f64::max);
        let all: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
        println!("{w:>8} {best:>14.0} {:>14.0} {mb:>10.1} {:>16}", best / w as f64, all.join(" "));
    }
    Ok(())
}

/// The generator stream every single-thread benchmark uses: seeded, with attack scenarios.
fn bench_generator(count: u64) -> Generator {
    shaped_generator(count, Default::default())
}

/// The benchmark's generator (seed 42, scenarios on) with Windows events in `windows_shape`.
fn shaped_generator(count: u64, windows_shape: ward_connectors::sources::generator::WindowsShape) -> Generator {
    let cfg = GeneratorConfig {
        count,
        rate: 0,
        seed: 42,
        start_time: "2026-01-05T08:00:00Z".into(),
        interval_ms: 10,
        scenarios: true,
        malformed_every: 0,
        windows_shape,
        cloud: false,
        hosts: false,
    };
    Generator::new("gen".into(), cfg, 1_767_600_000_000, 0, 1)
}

/// Runs `f`, returning its result, the time it took and the heap allocations it made.
fn time<T>(f: impl FnOnce() -> T) -> (T, (Duration, u64)) {
    let a = ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed);
    let t = Instant::now();
    let r = f();
    (r, (t.elapsed(), ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) - a))
}

fn stages(count: u64, zstd_level: i32) -> anyhow::Result<()> {
    let rules = repo().join("rules");
    let mut generator = bench_generator(count);
    let (raw, t_gen) = time(|| {
        let mut v = Vec::new();
        while let Ok(SourcePoll::Batch(b)) = generator.poll(1024) {
            v.push(b);
        }
        v
    });
    let bytes: usize = raw.iter().map(EventBatch::raw_len).sum();
    let mut parser = RecordParser::new(
        "parse".into(),
        Format::Auto,
        1 << 20,
        SyslogOptions { year: Some(2026), ..Default::default() },
    );
    let (parsed, t_parse) = time(|| run_op(&mut parser, raw.clone()));
    let packs = load_packs(&builtin::all_refs(), &Resources::new("."))?;
    let mut norm = Normalizer::new("normalize".into(), Arc::new(packs), Unmatched::Keep, false);
    let (normalized, t_norm) = time(|| run_op(&mut norm, parsed));
    let cfg = EnrichConfig {
        threat_intel: vec![ThreatIntelFile {
            path: rules.join("ti/demo-indicators.txt").display().to_string(),
            feed: None,
        }],
        geoip: Some(rules.join("geo/ward-test-city.mmdb").display().to_string()),
        asn: Some(rules.join("geo/ward-test-asn.mmdb").display().to_string()),
        assets: Some(rules.join("assets/demo-assets.csv").display().to_string()),
        risk: RiskWeights::default(),
        watch: false,
    };
    let data = cfg.handle("enrich", &Resources::new("."), &Default::default())?;
    let mut enricher = Enricher::new(data, RiskWeights::default());
    let (enriched, t_enrich) = time(|| run_op(&mut enricher, normalized));
    // What an alert that carries its event (`include_event`) costs per event it renders.
    let (rendered, t_event_json) = time(|| {
        let mut bytes = 0;
        for b in &enriched {
            for row in 0..b.len() {
                bytes += ward_engine::alert::EventJson::of_row(b, row).as_str().len();
            }
        }
        bytes
    });
    let dir = tempfile::tempdir()?;
    let pq = ParquetSinkConfig {
        path: "x".into(),
        row_group_size: 65536,
        zstd_level,
        partition_by: PartitionBy::Hour,
        max_file_rows: 1_000_000,
        close_idle_after_epochs: 60,
        text_statistics: false,
    };
    let mut sink = ParquetSink::new(
        pq,
        std::sync::Arc::new(ward_engine::storage::LocalStore::new(dir.path().to_path_buf())),
        "bench",
        0,
    )?;
    let (_, t_parquet) = time(|| -> anyhow::Result<()> {
        for b in enriched {
            sink.write(&Payload::Events(b.into()))?;
        }
        sink.finish()
    });
    let n = count as f64;
    println!(
        "stages on one thread, {count} events, {:.0} bytes/event ({:.0} as an alert's event JSON)",
        bytes as f64 / n,
        rendered as f64 / n
    );
    println!("{:<14} {:>10} {:>14} {:>14}", "stage", "seconds", "events/s", "allocs/event");
    let mut total = Duration::ZERO;
    for (name, (t, allocs)) in [
        ("generate", t_gen),
        ("parse", t_parse),
        ("normalize", t_norm),
        ("enrich", t_enrich),
        ("event json", t_event_json),
        ("parquet", t_parquet),
    ] {
        println!("{name:<14} {:>10.3} {:>14.0} {:>14.3}", t.as_secs_f64(), n / t.as_secs_f64(), allocs as f64 / n);
        if name != "generate" && name != "event json" {
            total += t;
        }
    }
    println!("{:<14} {:>10.3} {:>14.0}", "parse..parquet", total.as_secs_f64(), n / total.as_secs_f64());
    Ok(())
}

fn run_op(op: &mut dyn Operator, input: Vec<EventBatch>) -> Vec<EventBatch> {
    let mut out = OperatorOutput::default();
    for b in input {
        op.process(b, 0, &mut out);
    }
    out.events
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Pipeline { count, workers, repeat, checkpoint_interval_ms } => {
            pipeline(count, &workers, repeat, None)?;
            match checkpoint_interval_ms {
                Some(ms) => pipeline(count, &workers, repeat, Some(ms)),
                None => Ok(()),
            }
        }
        Cmd::Stages { count, zstd_level } => stages(count, zstd_level),
        Cmd::Correlate { keys, alerts_per_key } => correlate::run(keys, alerts_per_key),
        Cmd::State { keys } => state::run(keys),
        Cmd::Sigma { rules, count, competitor_count, sizes, repeat, no_sigma_rust } => {
            sigma::run(sigma::Args { rules, count, competitor_count, sizes, repeat, sigma_rust: !no_sigma_rust })
        }
        Cmd::Hostile { sizes, repeat } => hostile::run(&sizes, repeat),
        Cmd::Packs { count, repeat } => packs::run(count, repeat),
        Cmd::ParquetRead { events, fields, repeat } => parquet_read::run(&events, &fields, repeat),
        Cmd::Cluster { ward, count, repeat } => cluster::run(ward, count, repeat),
    }
}
