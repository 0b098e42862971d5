pub mod jsonl;
mod jsonl_committed;
pub mod parquet;
