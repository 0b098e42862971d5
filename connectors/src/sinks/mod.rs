pub mod clickhouse;
pub mod clickhouse_ddl;
pub(crate) mod clickhouse_rowbinary;
pub mod jsonl;
mod jsonl_committed;
pub mod kafka;
pub mod metrics;
pub mod parquet;
