//! Ward's connectors: sources and sinks that do I/O, one file per component with its config.

pub mod sinks;
pub mod sources;

use ward_engine::registry::Registry;

/// Registers every source and sink type.
pub fn register(registry: &mut Registry) {
    registry
        .register::<sources::file::FileSourceConfig>()
        .register::<sources::stdin::StdinSourceConfig>()
        .register::<sources::generator::GeneratorConfig>()
        .register::<sources::kafka::KafkaSourceConfig>()
        .register::<sinks::parquet::ParquetSinkConfig>()
        .register::<sinks::jsonl::JsonlSinkConfig>()
        .register::<sinks::clickhouse::ClickHouseSinkConfig>()
        .register::<sinks::kafka::KafkaSinkConfig>();
}
