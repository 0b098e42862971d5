-- The tables of pipelines/detection.yaml's views, read by the Grafana dashboards (helm/ward/dashboards).
-- Generated: ward views ddl pipelines/detection.yaml --dialect 18.16 (a test checks this file is current).

-- View `events_per_source_minute`: its rows' changes; read with FINAL (or sum(sign) per key).
CREATE TABLE IF NOT EXISTS ward.view_events_per_source_minute
(
    `window_start`  DateTime,
    `window_end`    DateTime,
    `event_dataset` String,
    `events`        Int64,
    `hosts`         Int64,
    `sign`          Int8,
    `version`       UInt64,
    `epoch`         UInt64,
    `ward_id`       UInt64
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
ORDER BY (window_start, `event_dataset`)
SETTINGS index_granularity = 8192;
-- The ids of every change inserted (collapsing removes rows; this keeps their ids), so a
-- sink resuming after a crash knows which blocks are in already.
CREATE MATERIALIZED VIEW IF NOT EXISTS ward.view_events_per_source_minute_inserted
ENGINE = ReplacingMergeTree ORDER BY ward_id
AS SELECT ward_id FROM ward.view_events_per_source_minute;

-- View `risk_per_host_5m`: its rows' changes; read with FINAL (or sum(sign) per key).
CREATE TABLE IF NOT EXISTS ward.view_risk_per_host_5m
(
    `window_start` DateTime,
    `window_end`   DateTime,
    `host_name`    String,
    `risk_avg`     Nullable(Float64),
    `risk_max`     Nullable(Int64),
    `sign`         Int8,
    `version`      UInt64,
    `epoch`        UInt64,
    `ward_id`      UInt64
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
ORDER BY (window_start, `host_name`)
SETTINGS index_granularity = 8192;
-- The ids of every change inserted (collapsing removes rows; this keeps their ids), so a
-- sink resuming after a crash knows which blocks are in already.
CREATE MATERIALIZED VIEW IF NOT EXISTS ward.view_risk_per_host_5m_inserted
ENGINE = ReplacingMergeTree ORDER BY ward_id
AS SELECT ward_id FROM ward.view_risk_per_host_5m;

-- View `listening_ports_per_host`: its rows' changes; read with FINAL (or sum(sign) per key).
CREATE TABLE IF NOT EXISTS ward.view_listening_ports_per_host
(
    `host_name`          String,
    `destination_port`   Int64,
    `process_executable` String,
    `listeners`          Int64,
    `sign`               Int8,
    `version`            UInt64,
    `epoch`              UInt64,
    `ward_id`            UInt64
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
ORDER BY (`host_name`, `destination_port`, `process_executable`)
SETTINGS index_granularity = 8192;
-- The ids of every change inserted (collapsing removes rows; this keeps their ids), so a
-- sink resuming after a crash knows which blocks are in already.
CREATE MATERIALIZED VIEW IF NOT EXISTS ward.view_listening_ports_per_host_inserted
ENGINE = ReplacingMergeTree ORDER BY ward_id
AS SELECT ward_id FROM ward.view_listening_ports_per_host;

-- View `local_users_per_host`: its rows' changes; read with FINAL (or sum(sign) per key).
CREATE TABLE IF NOT EXISTS ward.view_local_users_per_host
(
    `host_name` String,
    `user_name` String,
    `accounts`  Int64,
    `sign`      Int8,
    `version`   UInt64,
    `epoch`     UInt64,
    `ward_id`   UInt64
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
ORDER BY (`host_name`, `user_name`)
SETTINGS index_granularity = 8192;
-- The ids of every change inserted (collapsing removes rows; this keeps their ids), so a
-- sink resuming after a crash knows which blocks are in already.
CREATE MATERIALIZED VIEW IF NOT EXISTS ward.view_local_users_per_host_inserted
ENGINE = ReplacingMergeTree ORDER BY ward_id
AS SELECT ward_id FROM ward.view_local_users_per_host;

-- View `autoruns_per_host`: its rows' changes; read with FINAL (or sum(sign) per key).
CREATE TABLE IF NOT EXISTS ward.view_autoruns_per_host
(
    `host_name` String,
    `file_path` String,
    `entries`   Int64,
    `commands`  Int64,
    `sign`      Int8,
    `version`   UInt64,
    `epoch`     UInt64,
    `ward_id`   UInt64
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
ORDER BY (`host_name`, `file_path`)
SETTINGS index_granularity = 8192;
-- The ids of every change inserted (collapsing removes rows; this keeps their ids), so a
-- sink resuming after a crash knows which blocks are in already.
CREATE MATERIALIZED VIEW IF NOT EXISTS ward.view_autoruns_per_host_inserted
ENGINE = ReplacingMergeTree ORDER BY ward_id
AS SELECT ward_id FROM ward.view_autoruns_per_host;

-- View `honeypot_sessions`: its rows' changes; read with FINAL (or sum(sign) per key).
CREATE TABLE IF NOT EXISTS ward.view_honeypot_sessions
(
    `window_start` DateTime,
    `window_end`   DateTime,
    `session`      String,
    `source_ip`    String,
    `records`      Int64,
    `usernames`    Int64,
    `commands`     Int64,
    `downloads`    Int64,
    `sign`         Int8,
    `version`      UInt64,
    `epoch`        UInt64,
    `ward_id`      UInt64
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
ORDER BY (window_start, `session`, `source_ip`)
SETTINGS index_granularity = 8192;
-- The ids of every change inserted (collapsing removes rows; this keeps their ids), so a
-- sink resuming after a crash knows which blocks are in already.
CREATE MATERIALIZED VIEW IF NOT EXISTS ward.view_honeypot_sessions_inserted
ENGINE = ReplacingMergeTree ORDER BY ward_id
AS SELECT ward_id FROM ward.view_honeypot_sessions;

-- View `alerts_per_rule_hour`: its rows' changes; read with FINAL (or sum(sign) per key).
CREATE TABLE IF NOT EXISTS ward.view_alerts_per_rule_hour
(
    `window_start` DateTime,
    `window_end`   DateTime,
    `rule_id`      String,
    `rule_level`   String,
    `alerts`       Int64,
    `sign`         Int8,
    `version`      UInt64,
    `epoch`        UInt64,
    `ward_id`      UInt64
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
ORDER BY (window_start, `rule_id`, `rule_level`)
SETTINGS index_granularity = 8192;
-- The ids of every change inserted (collapsing removes rows; this keeps their ids), so a
-- sink resuming after a crash knows which blocks are in already.
CREATE MATERIALIZED VIEW IF NOT EXISTS ward.view_alerts_per_rule_hour_inserted
ENGINE = ReplacingMergeTree ORDER BY ward_id
AS SELECT ward_id FROM ward.view_alerts_per_rule_hour;

-- View `top_hosts_by_alerts`: its rows' changes; read with FINAL (or sum(sign) per key).
CREATE TABLE IF NOT EXISTS ward.view_top_hosts_by_alerts
(
    `window_start` DateTime,
    `window_end`   DateTime,
    `host_name`    String,
    `alerts`       Int64,
    `sign`         Int8,
    `version`      UInt64,
    `epoch`        UInt64,
    `ward_id`      UInt64
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
ORDER BY (window_start, `host_name`)
SETTINGS index_granularity = 8192;
-- The ids of every change inserted (collapsing removes rows; this keeps their ids), so a
-- sink resuming after a crash knows which blocks are in already.
CREATE MATERIALIZED VIEW IF NOT EXISTS ward.view_top_hosts_by_alerts_inserted
ENGINE = ReplacingMergeTree ORDER BY ward_id
AS SELECT ward_id FROM ward.view_top_hosts_by_alerts;

-- View `top_users_by_alerts`: its rows' changes; read with FINAL (or sum(sign) per key).
CREATE TABLE IF NOT EXISTS ward.view_top_users_by_alerts
(
    `window_start` DateTime,
    `window_end`   DateTime,
    `user_name`    String,
    `alerts`       Int64,
    `sign`         Int8,
    `version`      UInt64,
    `epoch`        UInt64,
    `ward_id`      UInt64
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
ORDER BY (window_start, `user_name`)
SETTINGS index_granularity = 8192;
-- The ids of every change inserted (collapsing removes rows; this keeps their ids), so a
-- sink resuming after a crash knows which blocks are in already.
CREATE MATERIALIZED VIEW IF NOT EXISTS ward.view_top_users_by_alerts_inserted
ENGINE = ReplacingMergeTree ORDER BY ward_id
AS SELECT ward_id FROM ward.view_top_users_by_alerts;

-- View `source_ips_per_rule_day`: its rows' changes; read with FINAL (or sum(sign) per key).
CREATE TABLE IF NOT EXISTS ward.view_source_ips_per_rule_day
(
    `window_start` DateTime,
    `window_end`   DateTime,
    `rule_id`      String,
    `source_ips`   Int64,
    `sign`         Int8,
    `version`      UInt64,
    `epoch`        UInt64,
    `ward_id`      UInt64
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
ORDER BY (window_start, `rule_id`)
SETTINGS index_granularity = 8192;
-- The ids of every change inserted (collapsing removes rows; this keeps their ids), so a
-- sink resuming after a crash knows which blocks are in already.
CREATE MATERIALIZED VIEW IF NOT EXISTS ward.view_source_ips_per_rule_day_inserted
ENGINE = ReplacingMergeTree ORDER BY ward_id
AS SELECT ward_id FROM ward.view_source_ips_per_rule_day;

-- View `cases_per_priority_day`: its rows' changes; read with FINAL (or sum(sign) per key).
CREATE TABLE IF NOT EXISTS ward.view_cases_per_priority_day
(
    `window_start` DateTime,
    `window_end`   DateTime,
    `priority`     String,
    `kind`         String,
    `records`      Int64,
    `cases`        Int64,
    `sign`         Int8,
    `version`      UInt64,
    `epoch`        UInt64,
    `ward_id`      UInt64
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
ORDER BY (window_start, `priority`, `kind`)
SETTINGS index_granularity = 8192;
-- The ids of every change inserted (collapsing removes rows; this keeps their ids), so a
-- sink resuming after a crash knows which blocks are in already.
CREATE MATERIALIZED VIEW IF NOT EXISTS ward.view_cases_per_priority_day_inserted
ENGINE = ReplacingMergeTree ORDER BY ward_id
AS SELECT ward_id FROM ward.view_cases_per_priority_day;

-- View `mtta_per_priority_day`: its rows' changes; read with FINAL (or sum(sign) per key).
CREATE TABLE IF NOT EXISTS ward.view_mtta_per_priority_day
(
    `window_start` DateTime,
    `window_end`   DateTime,
    `priority`     String,
    `mtta_ms`      Nullable(Float64),
    `acknowledged` Int64,
    `sign`         Int8,
    `version`      UInt64,
    `epoch`        UInt64,
    `ward_id`      UInt64
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
ORDER BY (window_start, `priority`)
SETTINGS index_granularity = 8192;
-- The ids of every change inserted (collapsing removes rows; this keeps their ids), so a
-- sink resuming after a crash knows which blocks are in already.
CREATE MATERIALIZED VIEW IF NOT EXISTS ward.view_mtta_per_priority_day_inserted
ENGINE = ReplacingMergeTree ORDER BY ward_id
AS SELECT ward_id FROM ward.view_mtta_per_priority_day;

-- View `mttc_per_priority_day`: its rows' changes; read with FINAL (or sum(sign) per key).
CREATE TABLE IF NOT EXISTS ward.view_mttc_per_priority_day
(
    `window_start` DateTime,
    `window_end`   DateTime,
    `priority`     String,
    `mttc_ms`      Nullable(Float64),
    `contained`    Int64,
    `sign`         Int8,
    `version`      UInt64,
    `epoch`        UInt64,
    `ward_id`      UInt64
)
ENGINE = VersionedCollapsingMergeTree(sign, version)
ORDER BY (window_start, `priority`)
SETTINGS index_granularity = 8192;
-- The ids of every change inserted (collapsing removes rows; this keeps their ids), so a
-- sink resuming after a crash knows which blocks are in already.
CREATE MATERIALIZED VIEW IF NOT EXISTS ward.view_mttc_per_priority_day_inserted
ENGINE = ReplacingMergeTree ORDER BY ward_id
AS SELECT ward_id FROM ward.view_mttc_per_priority_day;

