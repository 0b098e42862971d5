-- Ward's ClickHouse schema for ClickHouse 18.16 (Debian 12): no DateTime64, IPv6, Map, codecs or TTL.
-- Generated from Ward's field list; regenerate with WARD_UPDATE_SCHEMA=1 cargo test --test clickhouse.
-- Replays replace rows with the same ward_id: read with FINAL (or GROUP BY ward_id) for exactly-once results.

CREATE DATABASE IF NOT EXISTS ward;

CREATE TABLE IF NOT EXISTS ward.events
(
    `ward_id`                          UInt64,
    `timestamp`                        DateTime,
    `timestamp_ms`                     UInt16,
    `event_id`                         String,
    `event_kind`                       String,
    `event_category`                   String,
    `event_type`                       String,
    `event_action`                     String,
    `event_outcome`                    String,
    `event_code`                       String,
    `event_provider`                   String,
    `event_dataset`                    String,
    `event_module`                     String,
    `event_severity`                   Nullable(Int64),
    `event_created`                    Nullable(DateTime),
    `event_original`                   String,
    `log_level`                        String,
    `log_channel`                      String,
    `message`                          String,
    `host_name`                        String,
    `host_id`                          String,
    `host_ip`                          Nullable(String),
    `user_name`                        String,
    `user_domain`                      String,
    `user_id`                          String,
    `user_target_name`                 String,
    `source_ip`                        Nullable(String),
    `source_port`                      Nullable(Int64),
    `source_bytes`                     Nullable(Int64),
    `source_domain`                    String,
    `source_geo_country_iso_code`      String,
    `source_geo_city_name`             String,
    `source_as_number`                 Nullable(Int64),
    `source_as_organization_name`      String,
    `destination_ip`                   Nullable(String),
    `destination_port`                 Nullable(Int64),
    `destination_bytes`                Nullable(Int64),
    `destination_domain`               String,
    `destination_geo_country_iso_code` String,
    `destination_geo_city_name`        String,
    `destination_as_number`            Nullable(Int64),
    `destination_as_organization_name` String,
    `network_transport`                String,
    `network_protocol`                 String,
    `network_direction`                String,
    `network_bytes`                    Nullable(Int64),
    `network_packets`                  Nullable(Int64),
    `process_pid`                      Nullable(Int64),
    `process_name`                     String,
    `process_executable`               String,
    `process_command_line`             String,
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
    `dns_question_type`                String,
    `dns_response_code`                String,
    `dns_answers`                      String,
    `rule_id`                          String,
    `rule_name`                        String,
    `threat_indicator_type`            String,
    `threat_indicator_matched`         String,
    `threat_feed_name`                 String,
    `ward_asset_criticality`           Nullable(Int64),
    `ward_asset_owner`                 String,
    `ward_asset_tags`                  String,
    `ward_risk_score`                  Nullable(Int64),
    `ward_source`                      String,
    `ward_partition`                   String,
    `ward_offset`                      UInt64,
    `ext`                              String
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(timestamp)
ORDER BY (event_dataset, timestamp, ward_id)
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS ward.alerts
(
    `ward_id`          UInt64,
    `alert_id`         String,
    `event_time`       DateTime,
    `rule_id`          String,
    `rule_title`       String,
    `rule_level`       String,
    `rule_tags`        Array(String),
    `rule_techniques`  Array(String),
    `priority`         UInt8,
    `ruleset_version`  String,
    `detector`         String,
    `event_id`         Nullable(String),
    `origin_source`    String,
    `origin_partition` String,
    `origin_offset`    UInt64,
    `fields`           String,
    `record`           String
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(event_time)
ORDER BY (rule_id, event_time, ward_id)
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS ward.cases
(
    `ward_id`  UInt64,
    `case_id`  String,
    `kind`     String,
    `priority` String,
    `score`    Float64,
    `entity`   String,
    `opened`   DateTime,
    `time`     DateTime,
    `sla`      Nullable(String),
    `deadline` Nullable(DateTime),
    `tta_ms`   Nullable(Int64),
    `ttc_ms`   Nullable(Int64),
    `alert_id` Nullable(String),
    `rule_id`  Nullable(String),
    `alerts`   UInt64,
    `record`   String
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(time)
ORDER BY (case_id, time, ward_id)
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS ward.sla
(
    `ward_id`  UInt64,
    `case_id`  String,
    `kind`     String,
    `priority` String,
    `score`    Float64,
    `entity`   String,
    `opened`   DateTime,
    `time`     DateTime,
    `sla`      Nullable(String),
    `deadline` Nullable(DateTime),
    `tta_ms`   Nullable(Int64),
    `ttc_ms`   Nullable(Int64),
    `alert_id` Nullable(String),
    `rule_id`  Nullable(String),
    `alerts`   UInt64,
    `record`   String
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(time)
ORDER BY (case_id, kind, time, ward_id)
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS ward.quarantine
(
    `ward_id`           UInt64,
    `reason`            String,
    `detail`            String,
    `component`         String,
    `ward_source`       String,
    `ward_partition`    String,
    `ward_offset`       UInt64,
    `payload_escaped`   String,
    `payload_len`       UInt64,
    `payload_truncated` UInt8
)
ENGINE = ReplacingMergeTree
ORDER BY (ward_source, ward_partition, ward_offset, ward_id)
SETTINGS index_granularity = 8192;

CREATE MATERIALIZED VIEW IF NOT EXISTS ward.sla_from_cases TO ward.sla AS
SELECT `ward_id`, `case_id`, `kind`, `priority`, `score`, `entity`, `opened`, `time`, `sla`, `deadline`, `tta_ms`, `ttc_ms`, `alert_id`, `rule_id`, `alerts`, `record`
FROM ward.cases
WHERE kind LIKE 'sla.%';
