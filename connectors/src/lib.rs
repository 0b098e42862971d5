//! Ward's connectors: sources and sinks that do I/O, one file per component with its config.

pub mod records;
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
        .register::<sources::parquet::ParquetSourceConfig>()
        .register::<sources::clickhouse::ClickHouseSourceConfig>()
        .register::<sinks::parquet::ParquetSinkConfig>()
        .register::<sinks::jsonl::JsonlSinkConfig>()
        .register::<sinks::clickhouse::ClickHouseSinkConfig>()
        .register::<sinks::kafka::KafkaSinkConfig>()
        .register::<sinks::metrics::MetricsSinkConfig>();
}

/// Checks librdkafka properties before librdkafka sees them: a NUL byte would otherwise fail
/// as an anonymous "FFI nul error". Names the property, never echoes its value (secrets).
pub(crate) fn check_kafka_properties(properties: &std::collections::BTreeMap<String, String>) -> anyhow::Result<()> {
    for (k, v) in properties {
        let name = ward_engine::text::escape_text(k);
        anyhow::ensure!(!k.contains('\0'), "`properties`: the name `{name}` contains a NUL byte");
        anyhow::ensure!(!v.contains('\0'), "`properties`: the value of `{name}` contains a NUL byte");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn nul_bytes_in_kafka_properties_name_the_property_not_the_value() {
        let mut p = std::collections::BTreeMap::new();
        p.insert("sasl.password".to_string(), "s3cret\0x".to_string());
        let e = super::check_kafka_properties(&p).unwrap_err().to_string();
        assert!(e.contains("sasl.password") && !e.contains("s3cret"), "{e}");
        p.clear();
        p.insert("bad\0name".to_string(), "v".to_string());
        let e = super::check_kafka_properties(&p).unwrap_err().to_string();
        assert!(e.contains("bad\\u{0000}name"), "{e}");
    }
}
