-- Ward's ClickHouse schema for modern ClickHouse (checked against the real engine in tests).
-- Generated from Ward's field list; regenerate with WARD_UPDATE_SCHEMA=1 cargo test --test clickhouse.
-- Replays replace rows with the same ward_id: read with FINAL (or GROUP BY ward_id) for exactly-once results.

CREATE DATABASE IF NOT EXISTS ward;

CREATE TABLE IF NOT EXISTS ward.events
(
    `ward_id`                          UInt64,
    `timestamp`                        DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    `event_id`                         String,
    `event_kind`                       LowCardinality(String),
    `event_category`                   LowCardinality(String),
    `event_type`                       LowCardinality(String),
    `event_action`                     LowCardinality(String),
    `event_outcome`                    LowCardinality(String),
    `event_code`                       LowCardinality(String),
    `event_provider`                   LowCardinality(String),
    `event_dataset`                    LowCardinality(String),
    `event_module`                     LowCardinality(String),
    `event_severity`                   Nullable(Int64),
    `event_created`                    Nullable(DateTime64(3, 'UTC')),
    `event_original`                   String CODEC(ZSTD(3)),
    `log_level`                        LowCardinality(String),
    `log_channel`                      LowCardinality(String),
    `message`                          String CODEC(ZSTD(3)),
    `host_name`                        LowCardinality(String),
    `host_id`                          LowCardinality(String),
    `host_ip`                          Nullable(IPv6),
    `user_name`                        String,
    `user_domain`                      LowCardinality(String),
    `user_id`                          String,
    `user_target_name`                 String,
    `source_ip`                        Nullable(IPv6),
    `source_port`                      Nullable(Int64),
    `source_bytes`                     Nullable(Int64),
    `source_domain`                    String,
    `source_geo_country_iso_code`      LowCardinality(String),
    `source_geo_city_name`             LowCardinality(String),
    `source_as_number`                 Nullable(Int64),
    `source_as_organization_name`      LowCardinality(String),
    `destination_ip`                   Nullable(IPv6),
    `destination_port`                 Nullable(Int64),
    `destination_bytes`                Nullable(Int64),
    `destination_domain`               String,
    `destination_geo_country_iso_code` LowCardinality(String),
    `destination_geo_city_name`        LowCardinality(String),
    `destination_as_number`            Nullable(Int64),
    `destination_as_organization_name` LowCardinality(String),
    `network_transport`                LowCardinality(String),
    `network_protocol`                 LowCardinality(String),
    `network_direction`                LowCardinality(String),
    `network_bytes`                    Nullable(Int64),
    `network_packets`                  Nullable(Int64),
    `process_pid`                      Nullable(Int64),
    `process_name`                     String,
    `process_executable`               String,
    `process_command_line`             String CODEC(ZSTD(3)),
    `process_parent_pid`               Nullable(Int64),
    `process_parent_name`              String,
    `process_parent_executable`        String,
    `process_parent_command_line`      String,
    `process_hash_sha256`              String,
    `file_path`                        String,
    `file_name`                        String,
    `file_hash_md5`                    String,
    `file_hash_sha1`                   String,
    `file_hash_sha256`                 String,
    `url_full`                         String,
    `url_domain`                       String,
    `url_path`                         String,
    `dns_question_name`                String,
    `dns_question_type`                LowCardinality(String),
    `dns_response_code`                LowCardinality(String),
    `dns_answers`                      String,
    `rule_id`                          LowCardinality(String),
    `rule_name`                        LowCardinality(String),
    `threat_indicator_type`            LowCardinality(String),
    `threat_indicator_matched`         String,
    `threat_feed_name`                 LowCardinality(String),
    `ward_asset_criticality`           Nullable(Int64),
    `ward_asset_owner`                 LowCardinality(String),
    `ward_asset_tags`                  String,
    `ward_risk_score`                  Nullable(Int64),
    `ward_source`                      LowCardinality(String),
    `ward_partition`                   LowCardinality(String),
    `ward_offset`                      UInt64 CODEC(Delta, ZSTD(1)),
    `ext`                              Map(String, String) CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(timestamp)
ORDER BY (event_dataset, timestamp, ward_id)
TTL toDateTime(timestamp) + INTERVAL 90 DAY
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS ward.alerts
(
    `ward_id`          UInt64,
    `alert_id`         String,
    `event_time`       DateTime64(3, 'UTC'),
    `rule_id`          LowCardinality(String),
    `rule_title`       LowCardinality(String),
    `rule_level`       LowCardinality(String),
    `rule_tags`        Array(LowCardinality(String)),
    `rule_techniques`  Array(LowCardinality(String)),
    `priority`         UInt8,
    `ruleset_version`  LowCardinality(String),
    `detector`         LowCardinality(String),
    `event_id`         Nullable(String),
    `origin_source`    LowCardinality(String),
    `origin_partition` LowCardinality(String),
    `origin_offset`    UInt64,
    `fields`           Map(String, String),
    `record`           String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(event_time)
ORDER BY (rule_id, event_time, ward_id)
TTL toDateTime(event_time) + INTERVAL 90 DAY
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS ward.cases
(
    `ward_id`  UInt64,
    `case_id`  String,
    `kind`     LowCardinality(String),
    `priority` LowCardinality(String),
    `score`    Float64,
    `entity`   Map(String, String),
    `opened`   DateTime64(3, 'UTC'),
    `time`     DateTime64(3, 'UTC'),
    `sla`      Nullable(String),
    `deadline` Nullable(DateTime64(3, 'UTC')),
    `tta_ms`   Nullable(Int64),
    `ttc_ms`   Nullable(Int64),
    `alert_id` Nullable(String),
    `rule_id`  Nullable(String),
    `alerts`   UInt64,
    `record`   String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(time)
ORDER BY (case_id, time, ward_id)
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS ward.sla
(
    `ward_id`  UInt64,
    `case_id`  String,
    `kind`     LowCardinality(String),
    `priority` LowCardinality(String),
    `score`    Float64,
    `entity`   Map(String, String),
    `opened`   DateTime64(3, 'UTC'),
    `time`     DateTime64(3, 'UTC'),
    `sla`      Nullable(String),
    `deadline` Nullable(DateTime64(3, 'UTC')),
    `tta_ms`   Nullable(Int64),
    `ttc_ms`   Nullable(Int64),
    `alert_id` Nullable(String),
    `rule_id`  Nullable(String),
    `alerts`   UInt64,
    `record`   String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(time)
ORDER BY (case_id, kind, time, ward_id)
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS ward.quarantine
(
    `ward_id`           UInt64,
    `reason`            LowCardinality(String),
    `detail`            String,
    `component`         LowCardinality(String),
    `ward_source`       LowCardinality(String),
    `ward_partition`    LowCardinality(String),
    `ward_offset`       UInt64,
    `payload_escaped`   String CODEC(ZSTD(3)),
    `payload_len`       UInt64,
    `payload_truncated` UInt8
)
ENGINE = ReplacingMergeTree
ORDER BY (ward_source, ward_partition, ward_offset, ward_id)
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS ward.sla_from_cases TO ward.sla AS
SELECT `ward_id`, `case_id`, `kind`, `priority`, `score`, `entity`, `opened`, `time`, `sla`, `deadline`, `tta_ms`, `ttc_ms`, `alert_id`, `rule_id`, `alerts`, `record`
FROM ward.cases
WHERE kind LIKE 'sla.%';
