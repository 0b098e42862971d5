//! `ward views ddl SPEC`: the ClickHouse tables for the views of a spec.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use ward_connectors::sinks::clickhouse_ddl::{view_table, Dialect};
use ward_engine::registry::Built;

#[derive(Subcommand)]
pub enum ViewsCommand {
    /// Print a `CREATE TABLE` for every view in the spec: a VersionedCollapsingMergeTree named
    /// `view_<id>` holding the view's changes (point a `clickhouse` sink's `table` at it).
    Ddl {
        spec: PathBuf,
        #[arg(long, value_enum, default_value_t = DialectArg::Modern)]
        dialect: DialectArg,
        #[arg(long, default_value = "ward")]
        database: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DialectArg {
    /// ClickHouse 22 and later (DateTime64, LowCardinality).
    Modern,
    /// ClickHouse 18.16 (Debian 12's package).
    #[value(name = "18.16")]
    V18,
}

pub fn run(cmd: ViewsCommand) -> ExitCode {
    match cmd {
        ViewsCommand::Ddl { spec, dialect, database } => {
            let spec = match crate::load(&spec, &crate::registry()) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let d = match dialect {
                DialectArg::Modern => Dialect::Modern,
                DialectArg::V18 => Dialect::V18,
            };
            let mut any = false;
            for c in &spec.components {
                if let Built::View(f) = &c.built {
                    println!("{}", view_table(d, &database, &format!("view_{}", c.id), &f.logic().shape()));
                    any = true;
                }
            }
            if !any {
                eprintln!("{} has no view", spec.file.display());
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
    }
}
