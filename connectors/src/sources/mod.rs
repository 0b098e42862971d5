pub mod clickhouse;
pub mod file;
pub mod generator;
pub mod history;
pub mod kafka;
pub mod parquet;
pub mod stdin;
