pub mod file;
pub mod generator;
pub mod kafka;
pub mod parquet;
pub mod stdin;
