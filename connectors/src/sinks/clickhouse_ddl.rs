//! The ClickHouse schema Ward ships (`pipelines/clickhouse/`), generated from the ECS-lite
//! field list so the events table and the `clickhouse` sink's column naming cannot drift.
//!
//! Two dialects: modern ClickHouse (DateTime64(3), LowCardinality, IPv6, Map, codecs, daily
//! partitions, TTL) and Debian's 18.16, which has none of those types, codecs or TTL. Every
//! table is a `ReplacingMergeTree` whose sorting key ends in the deterministic `ward_id`, so
//! a replayed row replaces its first copy (read with `FINAL`).

use ward_engine::fields::{FieldId, FieldType};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Modern,
    /// ClickHouse 18.16 (Debian 12's package).
    V18,
}

/// Core string fields with few distinct values: `LowCardinality` in the modern dialect.
const LOW_CARDINALITY: &[&str] = &[
    "event.kind",
    "event.category",
    "event.type",
    "event.action",
    "event.outcome",
    "event.code",
    "event.provider",
    "event.dataset",
    "event.module",
    "log.level",
    "log.channel",
    "host.name",
    "host.id",
    "user.domain",
    "source.geo.country_iso_code",
    "source.geo.city_name",
    "source.as.organization.name",
    "destination.geo.country_iso_code",
    "destination.geo.city_name",
    "destination.as.organization.name",
    "network.transport",
    "network.protocol",
    "network.direction",
    "dns.question.type",
    "dns.response_code",
    "rule.id",
    "rule.name",
    "threat.indicator.type",
    "threat.feed.name",
    "ward.asset.owner",
];

/// Days events, alerts and quarantined records are kept (modern dialect).
pub const RETENTION_DAYS: u32 = 90;

struct Table {
    name: &'static str,
    columns: Vec<(String, String)>,
    partition: Option<&'static str>,
    order: &'static str,
    ttl: Option<&'static str>,
}

fn lc(d: Dialect, inner: &str) -> String {
    match d {
        Dialect::Modern => format!("LowCardinality({inner})"),
        Dialect::V18 => inner.to_string(),
    }
}

fn time(d: Dialect) -> &'static str {
    match d {
        Dialect::Modern => "DateTime64(3, 'UTC')",
        Dialect::V18 => "DateTime",
    }
}

fn codec(d: Dialect, ty: String, codec: &str) -> String {
    match d {
        Dialect::Modern => format!("{ty} CODEC({codec})"),
        Dialect::V18 => ty,
    }
}

fn map(d: Dialect) -> String {
    match d {
        Dialect::Modern => "Map(String, String)".into(),
        // No Map type: JSON text.
        Dialect::V18 => "String".into(),
    }
}

fn events(d: Dialect) -> Table {
    let mut columns = vec![("ward_id".to_string(), "UInt64".to_string())];
    for f in FieldId::all() {
        let name = f.name();
        let column = name.trim_start_matches('@').replace('.', "_");
        let ty = match f.field_type() {
            FieldType::Timestamp if name == "@timestamp" => codec(d, time(d).into(), "Delta, ZSTD(1)"),
            FieldType::Timestamp => format!("Nullable({})", time(d)),
            FieldType::Str if LOW_CARDINALITY.contains(&name) => lc(d, "String"),
            FieldType::Str if matches!(name, "event.original" | "message" | "process.command_line") => {
                codec(d, "String".into(), "ZSTD(3)")
            }
            FieldType::Str => "String".into(),
            FieldType::Ip => match d {
                Dialect::Modern => "Nullable(IPv6)".into(),
                Dialect::V18 => "Nullable(String)".into(),
            },
            FieldType::Int => "Nullable(Int64)".into(),
            FieldType::Float => "Nullable(Float64)".into(),
            FieldType::Bool => "Nullable(UInt8)".into(),
        };
        columns.push((column, ty));
        if name == "@timestamp" && d == Dialect::V18 {
            // 18.16's DateTime has whole seconds; the milliseconds keep event time exact
            // (correlation windows, read back by the clickhouse source).
            columns.push(("timestamp_ms".into(), "UInt16".into()));
        }
    }
    columns.push(("ward_source".into(), lc(d, "String")));
    columns.push(("ward_partition".into(), lc(d, "String")));
    columns.push(("ward_offset".into(), codec(d, "UInt64".into(), "Delta, ZSTD(1)")));
    columns.push(("ext".into(), codec(d, map(d), "ZSTD(3)")));
    Table {
        name: "events",
        columns,
        partition: Some("toDate(timestamp)"),
        order: "event_dataset, timestamp, ward_id",
        ttl: Some("toDateTime(timestamp)"),
    }
}

fn alerts(d: Dialect) -> Table {
    let s = |n: &str, t: String| (n.to_string(), t);
    Table {
        name: "alerts",
        columns: vec![
            s("ward_id", "UInt64".into()),
            s("alert_id", "String".into()),
            s("event_time", time(d).into()),
            s("rule_id", lc(d, "String")),
            s("rule_title", lc(d, "String")),
            s("rule_level", lc(d, "String")),
            s("rule_tags", format!("Array({})", lc(d, "String"))),
            s("rule_techniques", format!("Array({})", lc(d, "String"))),
            s("priority", "UInt8".into()),
            s("ruleset_version", lc(d, "String")),
            s("detector", lc(d, "String")),
            s("event_id", "Nullable(String)".into()),
            s("origin_source", lc(d, "String")),
            s("origin_partition", lc(d, "String")),
            s("origin_offset", "UInt64".into()),
            s("fields", map(d)),
            s("record", codec(d, "String".into(), "ZSTD(3)")),
        ],
        partition: Some("toDate(event_time)"),
        order: "rule_id, event_time, ward_id",
        ttl: Some("toDateTime(event_time)"),
    }
}

fn case_columns(d: Dialect) -> Vec<(String, String)> {
    let s = |n: &str, t: String| (n.to_string(), t);
    vec![
        s("ward_id", "UInt64".into()),
        s("case_id", "String".into()),
        s("kind", lc(d, "String")),
        s("priority", lc(d, "String")),
        s("score", "Float64".into()),
        s("entity", map(d)),
        s("opened", time(d).into()),
        s("time", time(d).into()),
        s("sla", format!("Nullable({})", "String")),
        s("deadline", format!("Nullable({})", time(d))),
        s("tta_ms", "Nullable(Int64)".into()),
        s("ttc_ms", "Nullable(Int64)".into()),
        s("alert_id", "Nullable(String)".into()),
        s("rule_id", "Nullable(String)".into()),
        s("alerts", "UInt64".into()),
        s("record", codec(d, "String".into(), "ZSTD(3)")),
    ]
}

fn cases(d: Dialect) -> Table {
    Table {
        name: "cases",
        columns: case_columns(d),
        partition: Some("toDate(time)"),
        order: "case_id, time, ward_id",
        ttl: None,
    }
}

/// SLA records (`sla.warning|breached|met`), filled from `cases` by a materialized view.
fn sla(d: Dialect) -> Table {
    Table {
        name: "sla",
        columns: case_columns(d),
        partition: Some("toDate(time)"),
        order: "case_id, kind, time, ward_id",
        ttl: None,
    }
}

fn quarantine(d: Dialect) -> Table {
    let s = |n: &str, t: String| (n.to_string(), t);
    Table {
        name: "quarantine",
        columns: vec![
            s("ward_id", "UInt64".into()),
            s("reason", lc(d, "String")),
            s("detail", "String".into()),
            s("component", lc(d, "String")),
            s("ward_source", lc(d, "String")),
            s("ward_partition", lc(d, "String")),
            s("ward_offset", "UInt64".into()),
            s("payload_escaped", codec(d, "String".into(), "ZSTD(3)")),
            s("payload_len", "UInt64".into()),
            s("payload_truncated", "UInt8".into()),
        ],
        partition: None,
        order: "ward_source, ward_partition, ward_offset, ward_id",
        ttl: None,
    }
}

fn create(d: Dialect, db: &str, t: &Table) -> String {
    let width = t.columns.iter().map(|(n, _)| n.len() + 2).max().unwrap_or(0);
    let cols: Vec<String> =
        t.columns.iter().map(|(n, ty)| format!("    {:width$} {ty}", format!("`{n}`"), width = width)).collect();
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {db}.{}\n(\n{}\n)\nENGINE = ReplacingMergeTree\n",
        t.name,
        cols.join(",\n")
    );
    if let Some(p) = t.partition {
        sql.push_str(&format!("PARTITION BY {p}\n"));
    }
    sql.push_str(&format!("ORDER BY ({})\n", t.order));
    if let (Dialect::Modern, Some(ttl)) = (d, t.ttl) {
        sql.push_str(&format!("TTL {ttl} + INTERVAL {RETENTION_DAYS} DAY\n"));
    }
    sql.push_str("SETTINGS index_granularity = 8192");
    if d == Dialect::Modern {
        // Lets `insert_deduplication_token` drop a replayed block on a non-replicated table.
        sql.push_str(", non_replicated_deduplication_window = 1000");
    }
    sql.push_str(";\n");
    sql
}

/// The whole schema as SQL statements separated by blank lines.
pub fn schema(d: Dialect, db: &str) -> String {
    let header = match d {
        Dialect::Modern => {
            "-- Ward's ClickHouse schema for modern ClickHouse (checked against the real engine in tests).\n"
        }
        Dialect::V18 => {
            "-- Ward's ClickHouse schema for ClickHouse 18.16 (Debian 12): no DateTime64, IPv6, Map, codecs or TTL.\n"
        }
    };
    let mut out = format!(
        "{header}-- Generated from Ward's field list; regenerate with WARD_UPDATE_SCHEMA=1 cargo test --test clickhouse.\n-- Replays replace rows with the same ward_id: read with FINAL (or GROUP BY ward_id) for exactly-once results.\n\nCREATE DATABASE IF NOT EXISTS {db};\n"
    );
    for t in [events(d), alerts(d), cases(d), sla(d), quarantine(d)] {
        out.push('\n');
        out.push_str(&create(d, db, &t));
    }
    let cols: Vec<String> = case_columns(d).into_iter().map(|(n, _)| format!("`{n}`")).collect();
    out.push_str(&format!(
        "\nCREATE MATERIALIZED VIEW IF NOT EXISTS {db}.sla_from_cases TO {db}.sla AS\nSELECT {}\nFROM {db}.cases\nWHERE kind LIKE 'sla.%';\n",
        cols.join(", ")
    ));
    out
}

/// The table beside a view's table that keeps the ids of the changes inserted.
pub const INSERTED_SUFFIX: &str = "_inserted";

/// The table of one view's changes (README, "Views"): a `VersionedCollapsingMergeTree`
/// whose sign is the change's difference and whose version is the epoch its row was inserted
/// at, so a row's insertion and its retraction cancel out. Read the view with `FINAL`, or
/// with `sum(sign)` per key. Group columns are not nullable (they are the sorting key): a
/// missing value reads as the type's default. No partitions: the sink inserts each worker's
/// changes of a checkpoint as one block, which a single partition keeps atomic.
pub fn view_table(d: Dialect, db: &str, table: &str, shape: &ward_engine::view::ViewShape) -> String {
    let column = |n: &str| n.trim_start_matches('@').replace('.', "_");
    let field_type = |name: &str| FieldId::lookup(name).map(|f| f.field_type());
    let mut columns: Vec<(String, String)> = Vec::new();
    let mut order: Vec<String> = Vec::new();
    if shape.windowed {
        columns.push(("window_start".into(), time(d).into()));
        columns.push(("window_end".into(), time(d).into()));
        order.push("window_start".into());
    }
    for g in &shape.group_by {
        let ty = match field_type(g) {
            Some(FieldType::Int) => "Int64".to_string(),
            Some(FieldType::Float) => "Float64".into(),
            Some(FieldType::Bool) => "UInt8".into(),
            Some(FieldType::Timestamp) => "Int64".into(),
            _ => lc(d, "String"),
        };
        columns.push((column(g), ty));
        order.push(format!("`{}`", column(g)));
    }
    for (name, (function, field)) in shape.measures.iter().zip(&shape.measure_fns) {
        let of_field = match field.as_deref().and_then(field_type) {
            Some(FieldType::Int | FieldType::Timestamp) => "Int64",
            Some(FieldType::Float) => "Float64",
            Some(FieldType::Bool) => "UInt8",
            _ => "String",
        };
        let ty = match function.as_str() {
            "count" | "count_distinct" => "Int64".to_string(),
            "sum" => "Float64".into(),
            "avg" => "Nullable(Float64)".into(),
            _ => format!("Nullable({of_field})"),
        };
        columns.push((name.clone(), ty));
    }
    for (n, ty) in [("sign", "Int8"), ("version", "UInt64"), ("epoch", "UInt64"), ("ward_id", "UInt64")] {
        columns.push((n.into(), ty.into()));
    }
    let width = columns.iter().map(|(n, _)| n.len() + 2).max().unwrap_or(0);
    let cols: Vec<String> =
        columns.iter().map(|(n, ty)| format!("    {:width$} {ty}", format!("`{n}`"), width = width)).collect();
    let order = if order.is_empty() { "tuple()".to_string() } else { format!("({})", order.join(", ")) };
    format!(
        "-- View `{}`: its rows' changes; read with FINAL (or sum(sign) per key).\n\
         CREATE TABLE IF NOT EXISTS {db}.{table}\n(\n{}\n)\nENGINE = VersionedCollapsingMergeTree(sign, version)\nORDER BY {order}\nSETTINGS index_granularity = 8192;\n\
         -- The ids of every change inserted (collapsing removes rows; this keeps their ids), so a\n\
         -- sink resuming after a crash knows which blocks are in already.\n\
         CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{table}{INSERTED_SUFFIX}\nENGINE = ReplacingMergeTree ORDER BY ward_id\nAS SELECT ward_id FROM {db}.{table};\n",
        shape.view,
        cols.join(",\n")
    )
}

/// The statements of [`schema`], one by one (for clients that take one per request).
pub fn statements(sql: &str) -> Vec<String> {
    sql.split(";\n")
        .map(|s| s.lines().filter(|l| !l.starts_with("--")).collect::<Vec<_>>().join("\n"))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_orders_by_the_row_id_last() {
        for d in [Dialect::Modern, Dialect::V18] {
            for t in [events(d), alerts(d), cases(d), sla(d), quarantine(d)] {
                assert!(t.order.ends_with("ward_id"), "{}", t.name);
                for key in t.order.split(", ") {
                    let (_, ty) = t.columns.iter().find(|(n, _)| n == key).unwrap_or_else(|| panic!("{key}"));
                    assert!(!ty.starts_with("Nullable"), "{}.{key} is a sorting key and nullable", t.name);
                }
            }
        }
    }

    #[test]
    fn the_old_dialect_avoids_what_18_16_lacks() {
        let sql = schema(Dialect::V18, "ward");
        let code: String = sql.lines().filter(|l| !l.starts_with("--")).collect::<Vec<_>>().join("\n");
        for absent in ["DateTime64", "IPv6", "Map(", "CODEC", "TTL", "LowCardinality"] {
            assert!(!code.contains(absent), "{absent}");
        }
        assert_eq!(statements(&sql).len(), 7);
    }
}
