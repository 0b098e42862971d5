//! `ward checkpoint list|inspect LOCATION`: what a checkpoint directory or object store holds.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Subcommand;
use ward_engine::checkpoint::{list, Restored};
use ward_engine::storage::{open, StorageOptions, Store};

#[derive(Subcommand)]
pub enum CheckpointCommand {
    /// The complete checkpoints in a directory or object store (`s3://bucket/prefix`, reached
    /// with the standard AWS_* environment), oldest first: epoch, time, workers, parts, bytes.
    List {
        #[arg(value_name = "DIR_OR_URL")]
        dir: String,
        /// Print JSON (one manifest per line).
        #[arg(long)]
        json: bool,
    },
    /// One checkpoint (default: the newest): its manifest and every part, checked against it.
    Inspect {
        #[arg(value_name = "DIR_OR_URL")]
        dir: String,
        /// The checkpoint's epoch.
        #[arg(long)]
        epoch: Option<u64>,
    },
}

pub fn run(cmd: CheckpointCommand) -> ExitCode {
    let result = match cmd {
        CheckpointCommand::List { dir, json } => list_cmd(&dir, json),
        CheckpointCommand::Inspect { dir, epoch } => inspect(&dir, epoch),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn time(ms: i64) -> String {
    ward_engine::batch::format_timestamp_ms(ms)
}

fn store(location: &str) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    let cwd = std::env::current_dir()?;
    open(location, &cwd, &StorageOptions::default(), None, "checkpoint")
}

fn list_cmd(dir: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = store(dir)?;
    let manifests = list(store.as_ref())?;
    let mut out = String::new();
    if json {
        for m in &manifests {
            writeln!(out, "{}", serde_json::to_string(m)?)?;
        }
        crate::emit(&out);
        return Ok(ExitCode::SUCCESS);
    }
    if manifests.is_empty() {
        eprintln!("no complete checkpoint in {}", store.location());
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "{:>12}  {:<29}  {:>7}  {:>5}  {:>12}  final", "epoch", "written", "workers", "parts", "bytes")?;
    for m in &manifests {
        let bytes: u64 = m.parts.iter().map(|p| p.bytes).sum();
        writeln!(
            out,
            "{:>12}  {:<29}  {:>7}  {:>5}  {:>12}  {}",
            m.epoch,
            time(m.created_ms),
            m.workers,
            m.parts.len(),
            bytes,
            if m.final_checkpoint { "yes" } else { "no" }
        )?;
    }
    crate::emit(&out);
    Ok(ExitCode::SUCCESS)
}

fn inspect(dir: &str, epoch: Option<u64>) -> anyhow::Result<ExitCode> {
    let store = store(dir)?;
    let manifests = list(store.as_ref())?;
    let manifest = match epoch {
        Some(e) => manifests.into_iter().find(|m| m.epoch == e),
        None => manifests.into_iter().last(),
    };
    let mut out = String::new();
    let Some(manifest) = manifest else {
        anyhow::bail!(
            "no complete checkpoint{} in {}",
            epoch.map_or(String::new(), |e| format!(" {e}")),
            store.location()
        );
    };
    writeln!(
        out,
        "checkpoint {} of pipeline `{}`: {} workers, written {}, layout v{}{}",
        manifest.epoch,
        manifest.pipeline,
        manifest.workers,
        time(manifest.created_ms),
        manifest.layout_version,
        if manifest.final_checkpoint { ", final (every source exhausted)" } else { "" }
    )?;
    if !manifest.rulesets.is_empty() {
        let sets: Vec<String> = manifest.rulesets.iter().map(|(c, v)| format!("{c} {v}")).collect();
        writeln!(out, "rule sets: {}", sets.join(", "))?;
    }
    let parts = manifest.parts.clone();
    let contexts = manifest.contexts.clone();
    // Reading it back verifies every part's size and checksum.
    Restored::load(store.as_ref(), manifest)?;
    writeln!(out, "{:<48} {:>12}  xxh3", "part", "bytes")?;
    for p in parts {
        writeln!(out, "{:<48} {:>12}  {}", p.name, p.bytes, p.xxh3)?;
    }
    if !contexts.is_empty() {
        writeln!(
            out,
            "{:<48} {:>12}  files (rule sets and enrichment data kept for a resume)",
            "context version", "bytes"
        )?;
        for (component, versions) in &contexts {
            for v in versions {
                let files = ward_engine::contexts::read_version(store.as_ref(), v)?;
                let name = format!("{component} {} (from epoch {})", v.version, v.first_epoch);
                writeln!(out, "{name:<48} {:>12}  {}", v.bytes, files.files().count())?;
            }
        }
    }
    writeln!(out, "every part matches the manifest")?;
    crate::emit(&out);
    Ok(ExitCode::SUCCESS)
}
