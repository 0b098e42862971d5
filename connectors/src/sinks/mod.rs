pub mod jsonl;
pub mod parquet;
