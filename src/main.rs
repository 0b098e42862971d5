//! `ward`: the command line. Wires the operator and connector crates into the engine.

mod checkpoint_cli;
mod demo;
mod events_file;
mod hunt_cli;
mod packs_cli;
mod rules_cli;
mod views_cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use ward_engine::registry::Registry;
use ward_engine::runtime::{self, RunOptions};
use ward_engine::spec::Spec;

/// Ward: a streaming detection engine. Pipelines are YAML specs of sources, operators and
/// sinks; see README.md for the format and `ward schema` for the JSON Schema.
#[derive(Parser)]
#[command(name = "ward", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until its bounded sources are exhausted or SIGINT/SIGTERM.
    Run {
        /// The pipeline spec (YAML).
        spec: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Run the demo pipeline on embedded defaults: synthetic telemetry through every
    /// operator into Parquet and JSONL, with metrics on the admin endpoint.
    Demo {
        /// Where to put the demo spec, its files and its output.
        #[arg(long, default_value = "ward-demo")]
        out: PathBuf,
        /// Records to generate.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Check a spec; prints every problem as FILE:LINE:COLUMN: reason and exits 2 if any.
    Validate { spec: PathBuf },
    /// Print the pipeline graph.
    Graph {
        spec: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Print the JSON Schema of pipeline specs (generated from the component configs).
    Schema,
    /// Print the ECS-lite field list (Markdown).
    Fields,
    /// Sigma rules: check, test on sample events, explain.
    #[command(subcommand)]
    Rules(rules_cli::RulesCommand),
    /// Checkpoints: what a checkpoint directory holds.
    #[command(subcommand)]
    Checkpoint(checkpoint_cli::CheckpointCommand),
    /// Normalization packs: list them, detect which one claims the events of a file.
    #[command(subcommand)]
    Packs(packs_cli::PacksCommand),
    /// Views: the ClickHouse tables for their changes.
    #[command(subcommand)]
    Views(views_cli::ViewsCommand),
    /// Retro-hunt: run Sigma and correlation rules over the events the parquet sink kept, with
    /// the live engine's operators; prints what each rule found.
    Hunt(hunt_cli::HuntArgs),
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Worker threads (per process, in a cluster).
    #[arg(long, short, default_value_t = 1, env = "WARD_WORKERS")]
    workers: usize,
    /// This process's index in a cluster (0-based; with --peers).
    #[arg(long, env = "WARD_PROCESS", conflicts_with = "process_from_hostname")]
    process: Option<usize>,
    /// Take the process index from the host name's last `-N` (a StatefulSet pod `ward-3` is 3).
    #[arg(long)]
    process_from_hostname: bool,
    /// Every process of the cluster, HOST:PORT, in the same order on every process; process I
    /// listens on the I-th. Without it, a single process.
    #[arg(long, env = "WARD_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// In a cluster: exit non-zero when a peer has been silent this long (a cut link or a hung
    /// process), so that all processes restart and resume, e.g. `10s`.
    #[arg(long, env = "WARD_PEER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    peer_timeout: std::time::Duration,
    /// In a cluster: exit non-zero when the processes have not all connected (and restored)
    /// within this long after start, e.g. `2m`.
    #[arg(long, env = "WARD_CONNECT_TIMEOUT", default_value = "2m", value_parser = humantime::parse_duration)]
    connect_timeout: std::time::Duration,
    /// Admin endpoint address (overrides the spec; empty string disables it).
    #[arg(long)]
    admin: Option<String>,
    /// No progress line and no summary.
    #[arg(long, short)]
    quiet: bool,
    /// Also write the run summary as JSON to this file.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Take checkpoints in this directory or object store (`s3://bucket/prefix`; overrides the
    /// spec's `settings.checkpoint`) and resume from the newest complete one found there.
    #[arg(long, value_name = "DIR_OR_URL")]
    checkpoint_dir: Option<String>,
    /// After SIGINT/SIGTERM, exit with code 1 if draining takes longer than this (overrides
    /// `settings.shutdown_timeout`, default 30s), e.g. `10s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    shutdown_timeout: Option<std::time::Duration>,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

/// Prints to standard output, ignoring a closed pipe (`ward checkpoint list DIR | head`).
pub(crate) fn emit(out: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
}

pub fn registry() -> Registry {
    let mut r = Registry::default();
    ward_operators::register(&mut r);
    ward_connectors::register(&mut r);
    r
}

fn load(spec: &Path, registry: &Registry) -> Result<Spec, ExitCode> {
    Spec::load(spec, registry).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!("{} problem(s) in {}", errors.0.len(), spec.display());
        ExitCode::from(2)
    })
}

fn run_spec(spec: &Spec, args: &RunArgs) -> ExitCode {
    for w in &spec.warnings {
        eprintln!("warning: {w}");
    }
    // Descriptors are the dataflow's to use (files, checkpoints, sockets): take what the hard
    // limit allows instead of the usual soft 1,024.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let stop = Arc::new(AtomicBool::new(false));
    // Its own flag: in a cluster `stop` is also set when another process was asked to stop,
    // and this process's own signal must then still drain, not end it at once.
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while draining ends the process at once.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, signalled.clone());
        let _ = signal_hook::flag::register(sig, signalled.clone());
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    spawn_shutdown_watchdog(stop.clone(), args.shutdown_timeout.unwrap_or(spec.settings.shutdown_timeout));
    let cluster = match cluster_of(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let opts = RunOptions {
        workers: args.workers,
        cluster,
        admin_listen: args.admin.clone(),
        progress: !args.quiet,
        checkpoint_dir: args.checkpoint_dir.clone(),
    };
    match runtime::run(spec, &opts, stop) {
        Ok(summary) => {
            if !args.quiet {
                eprint!("{}", summary.render());
            }
            if let Some(path) = &args.summary_json {
                let json = summary_json(&summary);
                if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&json).unwrap_or_default()) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The cluster settings of `ward run`: none without peers (a single process), else the
/// process index from --process / WARD_PROCESS or the host name.
fn cluster_of(args: &RunArgs) -> anyhow::Result<Option<runtime::Cluster>> {
    if args.peers.is_empty() {
        if args.process.is_some() || args.process_from_hostname {
            anyhow::bail!("--process and --process-from-hostname need --peers (or WARD_PEERS)");
        }
        return Ok(None);
    }
    let process = if args.process_from_hostname {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
            .ok_or_else(|| anyhow::anyhow!("--process-from-hostname: no HOSTNAME and no /etc/hostname"))?;
        runtime::Cluster::process_from_hostname(&host)?
    } else {
        args.process
            .ok_or_else(|| anyhow::anyhow!("--peers needs --process (or WARD_PROCESS) or --process-from-hostname"))?
    };
    let cluster = runtime::Cluster::new(process, args.peers.clone())?;
    Ok(Some(cluster.with_timeouts(args.peer_timeout, args.connect_timeout)?))
}

/// Acknowledges the first SIGINT/SIGTERM and bounds the drain that follows: sources stop at
/// once, in-flight batches may take `timeout`; after that the process exits with code 1 without
/// committing more (like a crash: what is committed stays, the next run resumes).
fn spawn_shutdown_watchdog(stop: Arc<AtomicBool>, timeout: std::time::Duration) {
    let _ = std::thread::Builder::new().name("ward-shutdown".into()).spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        eprintln!(
            "ward: signal received: sources stopped, draining in-flight batches (up to {}; a second signal exits at once)",
            humantime::format_duration(timeout)
        );
        std::thread::sleep(timeout);
        eprintln!(
            "ward: the drain did not finish within {} (a sink unavailable?): exiting without committing more; \
             the next run resumes from the newest checkpoint",
            humantime::format_duration(timeout)
        );
        ward_engine::storage::spool::remove();
        std::process::exit(1);
    });
}

fn summary_json(s: &runtime::RunSummary) -> serde_json::Value {
    serde_json::json!({
        "pipeline": s.pipeline,
        "workers": s.workers,
        "elapsed_seconds": s.elapsed.as_secs_f64(),
        "records_read": s.records_read(),
        "events_per_second": s.events_per_second(),
        "stopped_by_signal": s.stopped_by_signal,
        "components": s.components.iter().map(|c| serde_json::json!({
            "id": c.id,
            "type": c.type_name,
            "in": c.records_in,
            "out": c.records_out,
            "filtered": c.filtered,
            "quarantined": c.quarantined,
            "quarantined_by_reason": c.quarantined_by_reason.iter().map(|(r, n)| (r.as_str().to_string(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
            "errors": c.errors,
            "ledger_ok": c.ledger_balances(),
        })).collect::<Vec<_>>(),
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    // FAILPOINTS=name=action;... (e.g. `checkpoint-manifest=sleep(200)`): see scripts/chaos.py.
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let registry = registry();
    let code = match cli.command {
        Command::Run { spec, run } => match load(&spec, &registry) {
            Ok(s) => run_spec(&s, &run),
            Err(code) => code,
        },
        Command::Demo { out, count, run } => match demo::materialize(&out, count) {
            Ok(spec_path) => {
                if !run.quiet {
                    eprintln!(
                        "demo spec and files in {}; output goes to {}",
                        out.display(),
                        out.join("out/demo").display()
                    );
                }
                match load(&spec_path, &registry) {
                    Ok(s) => run_spec(&s, &run),
                    Err(code) => code,
                }
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Validate { spec } => match load(&spec, &registry) {
            Ok(s) => {
                for w in &s.warnings {
                    eprintln!("warning: {w}");
                }
                println!("{}: ok ({} components)", spec.display(), s.components.len());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Graph { spec, format } => match load(&spec, &registry) {
            Ok(s) => {
                print!(
                    "{}",
                    match format {
                        GraphFormat::Mermaid => s.to_mermaid(),
                        GraphFormat::Dot => s.to_dot(),
                    }
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&ward_engine::spec::json_schema(&registry)).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Rules(cmd) => rules_cli::run(cmd),
        Command::Checkpoint(cmd) => checkpoint_cli::run(cmd),
        Command::Views(cmd) => views_cli::run(cmd),
        Command::Hunt(args) => hunt_cli::run(args, &registry),
        Command::Packs(cmd) => packs_cli::run(cmd),
        Command::Fields => {
            println!("| field | type | description |\n|---|---|---|");
            for f in ward_engine::fields::FieldId::all() {
                println!("| `{}` | {:?} | {} |", f.name(), f.field_type(), f.description());
            }
            ExitCode::SUCCESS
        }
    };
    // Files still spooled for an object store will never be uploaded by this process.
    ward_engine::storage::spool::remove();
    code
}
