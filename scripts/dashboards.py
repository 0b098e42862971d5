#!/usr/bin/env python3
"""Writes Ward's Grafana dashboards (helm/ward/dashboards/*.json) from the panel lists below.

    python3 scripts/dashboards.py           # write the JSON files
    python3 scripts/dashboards.py --check   # exit 1 if a file differs from what this script writes

Every query here is evaluated in tests/dashboards.rs: the Prometheus ones by a real Prometheus
that scraped a running Ward pipeline, the ClickHouse ones on chdb against the shipped schema
filled from a real run. Variables: `$datasource` / `$clickhouse` (data sources, never fixed
UIDs), `$pipeline` (the scrape job: one per pipeline deployment), `$process` (a cluster's
process), `$database` (ClickHouse database).
"""
import argparse
import json
import os
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helm", "ward", "dashboards")

PROM = {"type": "prometheus", "uid": "${datasource}"}
CH = {"type": "grafana-clickhouse-datasource", "uid": "${clickhouse}"}
# Series selector every Prometheus query carries.
SEL = 'job=~"$pipeline",process=~"$process"'
RATE = "$__rate_interval"


def prom_vars():
    return [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "current": {},
         "hide": 0},
        {"name": "pipeline", "label": "Pipeline", "type": "query", "datasource": PROM,
         "query": {"query": "label_values(ward_build_info, job)", "refId": "pipeline"},
         "definition": "label_values(ward_build_info, job)", "refresh": 2, "includeAll": True, "multi": True,
         "allValue": ".*", "current": {}, "sort": 1, "hide": 0},
        {"name": "process", "label": "Process", "type": "query", "datasource": PROM,
         "query": {"query": 'label_values(ward_build_info{job=~"$pipeline"}, process)', "refId": "process"},
         "definition": 'label_values(ward_build_info{job=~"$pipeline"}, process)', "refresh": 2,
         "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "sort": 3, "hide": 0},
    ]


def ch_vars():
    return [
        {"name": "clickhouse", "label": "ClickHouse", "type": "datasource", "query": "grafana-clickhouse-datasource",
         "current": {}, "hide": 0},
        {"name": "database", "label": "Database", "type": "textbox", "query": "ward",
         "current": {"text": "ward", "value": "ward"}, "hide": 0},
    ]


def prom(expr, legend=""):
    return {"datasource": PROM, "expr": expr, "legendFormat": legend, "range": True, "instant": False}


def sql(text, fmt="time_series"):
    # The ClickHouse plugin's formats: 0 time series, 1 table.
    return {"datasource": CH, "editorType": "sql", "rawSql": " ".join(text.split()),
            "format": 0 if fmt == "time_series" else 1, "queryType": "timeseries" if fmt == "time_series" else "table"}


def panel(kind, title, unit, targets, description="", w=12, h=8, options=None, field=None):
    targets = targets if isinstance(targets, list) else [targets]
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    p = {"type": kind, "title": title, "description": description, "datasource": targets[0]["datasource"],
         "targets": targets, "gridPos": {"w": w, "h": h},
         "fieldConfig": {"defaults": dict({"unit": unit}, **(field or {})), "overrides": []},
         "options": options or {}}
    return p


def dashboard(uid, title, description, variables, panels, refresh="30s", span="now-6h"):
    x = y = row_h = 0
    for i, p in enumerate(panels):
        g = p["gridPos"]
        if x + g["w"] > 24:
            x, y, row_h = 0, y + row_h, 0
        g["x"], g["y"] = x, y
        x += g["w"]
        row_h = max(row_h, g["h"])
        p["id"] = i + 1
    return {
        "uid": uid, "title": title, "description": description, "tags": ["ward"], "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": refresh, "timezone": "utc", "graphTooltip": 1,
        "time": {"from": span, "to": "now"}, "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "annotations": {"list": []}, "links": [], "templating": {"list": variables}, "panels": panels,
    }


def pipeline():
    by_component = lambda metric: f'sum by (component) (rate({metric}{{{SEL}}}[{RATE}]))'
    return dashboard("ward-pipeline", "Ward / Pipeline",
                     "Records through every component, quarantine, the ledger, latency, watermarks, Kafka lag, "
                     "checkpoints, sinks and rule reloads (Prometheus).", prom_vars(), [
        panel("stat", "Events read per second", "ops", prom(f"sum(ward_events_per_second{{{SEL}}})"),
              "Records read by all sources, over the last few seconds.", w=6, h=4),
        panel("stat", "Ready processes", "short", prom(f"sum(ward_ready{{{SEL}}})"),
              "Processes whose dataflow is built and running.", w=6, h=4),
        panel("stat", "In-flight bytes", "bytes", prom(f"sum(ward_in_flight_bytes{{{SEL}}})"),
              "Bytes read but not yet written by every sink (bounded by max_in_flight_bytes).", w=6, h=4),
        panel("stat", "Checkpoint age", "s",
              prom(f"max(time() - (ward_checkpoint_timestamp_seconds{{{SEL}}} > 0))"),
              "Time since the newest complete checkpoint.", w=6, h=4),
        panel("timeseries", "Records in per component", "ops", prom(by_component("ward_records_in_total"), "{{component}}"),
              "Records each component received (sources: read)."),
        panel("timeseries", "Records out per component", "ops", prom(by_component("ward_records_out_total"), "{{component}}"),
              "Records each component emitted (sinks: written)."),
        panel("timeseries", "Quarantined by reason", "ops",
              prom(f'sum by (component, reason) (rate(ward_records_quarantined_total{{{SEL}}}[{RATE}]))',
                   "{{component}}: {{reason}}"),
              "Records set aside with a reason (quarantine sink)."),
        panel("table", "Ledger: records not yet accounted for", "short",
              prom(f'sum by (component) (ward_records_in_total{{{SEL}}}) '
                   f'- sum by (component) (ward_records_out_total{{{SEL}}}) '
                   f'- sum by (component) (ward_records_filtered_total{{{SEL}}}) '
                   f'- sum by (component) (ward_records_quarantined_total{{{SEL}}})', "{{component}}"),
              "In − out − filtered − quarantined per component since start: records a component holds "
              "(state, open windows) or emits several of (alerts per event). A stateless component's "
              "value stays 0."),
        panel("timeseries", "Batch latency p99", "s",
              prom(f'histogram_quantile(0.99, sum by (le, component) '
                   f'(rate(ward_batch_duration_seconds_bucket{{{SEL}}}[{RATE}])))', "{{component}}"),
              "Time a component spends on one batch."),
        panel("timeseries", "Watermark lag", "s",
              prom(f'max by (component) (ward_watermark_lag_seconds{{{SEL}}})', "{{component}}"),
              "Wall clock minus each stateful operator's event-time watermark (replays show the age of the data)."),
        panel("timeseries", "Kafka consumer lag per partition", "short",
              prom(f'sum by (partition) (ward_kafka_consumer_lag{{{SEL}}})', "{{partition}}"),
              "Records between the high watermark and the next offset read."),
        panel("timeseries", "Kafka fetch rate", "ops",
              prom(f'sum by (component) (rate(ward_kafka_fetched_records_total{{{SEL}}}[{RATE}]))', "{{component}}"),
              "Records fetched from the brokers."),
        panel("timeseries", "Checkpoint duration p95", "s",
              prom(f'histogram_quantile(0.95, sum by (le) (rate(ward_checkpoint_duration_seconds_bucket{{{SEL}}}[{RATE}])))',
                   "p95"),
              "From a checkpoint's first part written to its manifest."),
        panel("timeseries", "Checkpoint size", "bytes", prom(f'max(ward_checkpoint_bytes{{{SEL}}})', "size"),
              "Size of the newest complete checkpoint."),
        panel("timeseries", "Sink retries", "ops",
              prom(f'sum by (component) (rate(ward_sink_retries_total{{{SEL}}}[{RATE}]))', "{{component}}"),
              "Writes a sink retried (ClickHouse, Kafka)."),
        panel("state-timeline", "Sink circuit breakers", "short",
              prom(f'max by (component) (ward_sink_circuit_state{{{SEL}}})', "{{component}}"),
              "0 closed, 1 open (failing: the dataflow is back-pressured), 2 half-open (probing).",
              field={"mappings": [{"type": "value", "options": {
                  "0": {"text": "closed", "color": "green"}, "1": {"text": "open", "color": "red"},
                  "2": {"text": "half-open", "color": "yellow"}}}]}),
        panel("timeseries", "Rule and resource reloads", "short",
              [prom(f'sum by (component) (increase(ward_resource_reloads_total{{{SEL}}}[$__range]))', "{{component}} ok"),
               prom(f'sum by (component) (increase(ward_resource_reload_failures_total{{{SEL}}}[$__range]))',
                    "{{component}} failed")],
              "Reloads of watched rules and enrichment files; a failed one keeps the running version."),
        panel("table", "Running rule sets", "short",
              prom(f'max by (component, version) (ward_ruleset_info{{{SEL}}} == 1)', "{{component}} {{version}}"),
              "Each detector's running rule-set version (content hash)."),
        panel("timeseries", "Rules loaded", "short",
              prom(f'max by (component, status) (ward_rules_loaded{{{SEL}}} > 0)', "{{component}} {{status}}"),
              "Rules compiled and rejected in each detector's running set."),
        panel("timeseries", "Alerts per detector", "ops",
              prom(f'sum by (component) (rate(ward_alerts_total{{{SEL}}}[{RATE}]) > 0)', "{{component}}"),
              "Alerts raised by sigma-match and correlate."),
        panel("timeseries", "Late events", "ops",
              prom(f'sum by (component) (rate(ward_late_events_total{{{SEL}}}[{RATE}]))', "{{component}}"),
              "Records behind the watermark beyond the allowed lateness (quarantined as late_event)."),
        panel("timeseries", "Keys with live state", "short",
              prom(f'sum by (component) (ward_state_keys{{{SEL}}})', "{{component}}"),
              "Keys held by each stateful operator."),
        panel("timeseries", "Bytes read per process", "Bps",
              prom(f'sum by (process) (rate(ward_source_bytes_total{{{SEL}}}[{RATE}]))', "process {{process}}"),
              "Payload bytes the sources of each process of a cluster read (one series without a cluster)."),
        panel("timeseries", "Source back-pressure", "percentunit",
              prom(f'sum by (process) (rate(ward_source_backpressure_seconds_total{{{SEL}}}[{RATE}]))', "process {{process}}"),
              "Share of time sources waited because too many bytes were in flight."),
    ], refresh="10s", span="now-1h")


def ch_view(table, columns, measure_sql, where="1"):
    """Live rows of a view table: every key's changes net out to its newest row."""
    return (f"SELECT window_start AS time, {columns}, {measure_sql} FROM ${{database}}.{table} "
            f"WHERE $__timeFilter(window_start) AND {where} GROUP BY time, {columns} HAVING sum(sign) > 0 ORDER BY time")


def newest_window(table, column, measure):
    live = (f"SELECT window_start, {column} FROM ${{database}}.{table} WHERE $__timeFilter(window_start) "
            f"GROUP BY window_start, {column} HAVING sum(sign) > 0")
    return (f"SELECT {column}, sum({measure} * sign) AS {measure} FROM ${{database}}.{table} "
            f"WHERE window_start = (SELECT max(window_start) FROM ({live})) "
            f"GROUP BY {column} HAVING sum(sign) > 0 ORDER BY {measure} DESC, {column} LIMIT 10")


def detections():
    return dashboard("ward-detections", "Ward / Detections",
                     "Alerts by rule and level, top hosts and users, ATT&CK techniques, threat-intel hits and risk "
                     "(ClickHouse: the alerts and events tables and the detection pipeline's views).", ch_vars(), [
        panel("timeseries", "Alerts by rule", "short", sql(
            "SELECT $__timeInterval(event_time) AS time, rule_id, count() AS alerts FROM ${database}.alerts FINAL "
            "WHERE $__timeFilter(event_time) GROUP BY time, rule_id ORDER BY time"),
            "Alerts per rule (alerts table)."),
        panel("timeseries", "Alerts by level", "short", sql(
            "SELECT window_start AS time, rule_level, sum(alerts * sign) AS alerts FROM ${database}.view_alerts_per_rule_hour "
            "WHERE $__timeFilter(window_start) GROUP BY time, rule_level HAVING sum(sign) > 0 ORDER BY time"),
            "Alerts per level and hour (view alerts_per_rule_hour)."),
        panel("bargauge", "Top hosts by alerts (newest hour)", "short",
              sql(newest_window("view_top_hosts_by_alerts", "host_name", "alerts"), "table"),
              "The 10 hosts with most alerts in the newest sliding hour (view top_hosts_by_alerts).",
              options={"orientation": "horizontal", "displayMode": "gradient"}),
        panel("bargauge", "Top users by alerts (newest hour)", "short",
              sql(newest_window("view_top_users_by_alerts", "user_name", "alerts"), "table"),
              "The 10 users with most alerts in the newest sliding hour (view top_users_by_alerts).",
              options={"orientation": "horizontal", "displayMode": "gradient"}),
        panel("table", "ATT&CK techniques", "short", sql(
            "SELECT technique, count() AS alerts, uniqExact(rule_id) AS rules FROM ${database}.alerts FINAL "
            "ARRAY JOIN rule_techniques AS technique WHERE $__timeFilter(event_time) "
            "GROUP BY technique ORDER BY alerts DESC, technique LIMIT 30", "table"),
            "Alerts per ATT&CK technique of their rules."),
        panel("timeseries", "Threat-intel hits by feed", "short", sql(
            "SELECT $__timeInterval(timestamp) AS time, threat_feed_name AS feed, count() AS hits FROM ${database}.events "
            "WHERE $__timeFilter(timestamp) AND threat_feed_name != '' GROUP BY time, feed ORDER BY time"),
            "Events whose indicators matched a threat-intel feed."),
        panel("barchart", "Risk score distribution", "short", sql(
            "SELECT toString(intDiv(ward_risk_score, 10) * 10) AS risk, count() AS events FROM ${database}.events "
            "WHERE $__timeFilter(timestamp) AND ward_risk_score IS NOT NULL "
            "GROUP BY intDiv(ward_risk_score, 10) AS bucket, risk ORDER BY bucket", "table"),
            "Events per risk-score band of 10 (enrichment's ward.risk_score)."),
        panel("timeseries", "Average risk per host (5 min)", "short", sql(
            ch_view("view_risk_per_host_5m", "host_name", "sum(risk_avg * sign) AS risk")),
            "Mean risk score per host and 5 minutes (view risk_per_host_5m)."),
        panel("table", "Distinct source IPs per rule and day", "short", sql(
            "SELECT window_start AS day, rule_id, sum(source_ips * sign) AS source_ips "
            "FROM ${database}.view_source_ips_per_rule_day WHERE $__timeFilter(window_start) "
            "GROUP BY day, rule_id HAVING sum(sign) > 0 ORDER BY day DESC, source_ips DESC", "table"),
            "Distinct source addresses behind each rule's alerts (view source_ips_per_rule_day)."),
        panel("timeseries", "Events per source", "short", sql(
            ch_view("view_events_per_source_minute", "event_dataset", "sum(events * sign) AS events")),
            "Events per dataset and minute (view events_per_source_minute)."),
    ])


def cases():
    return dashboard("ward-cases", "Ward / Cases and SLA",
                     "Open cases, SLA breaches, MTTA and MTTC trends and case activity (ClickHouse: the cases and "
                     "sla tables and the detection pipeline's case views).", ch_vars(), [
        panel("bargauge", "Open cases by priority", "short", sql(
            "SELECT priority, uniqExactIf(case_id, kind = 'case.opened') - uniqExactIf(case_id, kind = 'case.contained') "
            "AS open FROM ${database}.cases FINAL WHERE $__timeFilter(opened) GROUP BY priority ORDER BY priority", "table"),
            "Cases opened in the time range and not contained.", w=8,
            options={"orientation": "horizontal", "displayMode": "gradient"}),
        panel("timeseries", "Cases opened per priority and day", "short", sql(
            ch_view("view_cases_per_priority_day", "priority", "sum(cases * sign) AS cases", "kind = 'case.opened'")),
            "Distinct cases opened (view cases_per_priority_day).", w=16),
        panel("timeseries", "SLA breaches", "short", sql(
            "SELECT $__timeInterval(time) AS bucket, concat(priority, ' ', ifNull(sla, '')) AS clock, count() AS breaches "
            "FROM ${database}.sla FINAL WHERE kind = 'sla.breached' AND $__timeFilter(time) "
            "GROUP BY bucket, clock ORDER BY bucket"),
            "Deadlines missed, by priority and clock (acknowledge, contain)."),
        panel("table", "SLA met and breached", "short", sql(
            "SELECT priority, ifNull(sla, '') AS clock, countIf(kind = 'sla.met') AS met, "
            "countIf(kind = 'sla.breached') AS breached, countIf(kind = 'sla.warning') AS warnings "
            "FROM ${database}.sla FINAL WHERE $__timeFilter(time) GROUP BY priority, clock ORDER BY priority, clock", "table"),
            "Per priority and clock."),
        panel("timeseries", "MTTA per priority", "ms", sql(
            ch_view("view_mtta_per_priority_day", "priority", "sum(mtta_ms * sign) AS mtta")),
            "Mean time to acknowledge per day (view mtta_per_priority_day)."),
        panel("timeseries", "MTTC per priority", "ms", sql(
            ch_view("view_mttc_per_priority_day", "priority", "sum(mttc_ms * sign) AS mttc")),
            "Mean time to contain per day (view mttc_per_priority_day)."),
        panel("heatmap", "Case activity by hour of day", "short", sql(
            "SELECT toStartOfDay(time) AS day, toString(toHour(time)) AS hour, count() AS records "
            "FROM ${database}.cases FINAL WHERE $__timeFilter(time) GROUP BY day, hour ORDER BY day"),
            "Case records (opened, joined, acknowledged, ...) per day and hour of day.", w=24,
            options={"calculate": False, "yAxis": {"axisLabel": "hour"}}),
    ], span="now-7d")


def state_now(table, columns, measure):
    """A view without a window: the rows every key's changes leave, with a positive measure."""
    return (f"SELECT {columns}, sum({measure} * sign) AS {measure} FROM ${{database}}.{table} "
            f"GROUP BY {columns} HAVING sum(sign) > 0 AND {measure} > 0 ORDER BY {columns}")


def hosts():
    osquery = "event_module = 'osquery' AND $__timeFilter(timestamp)"
    cowrie = "event_module = 'cowrie' AND $__timeFilter(timestamp)"
    return dashboard("ward-hosts", "Ward / Hosts",
                     "Host state from osquery's differential results (listening ports, local users, autoruns, and "
                     "how they changed) and the Cowrie honeypot's sessions (ClickHouse: the events table and the "
                     "detection pipeline's host views).", ch_vars(), [
        panel("timeseries", "Host state changes", "short", sql(
            "SELECT $__timeInterval(timestamp) AS time, concat(event_dataset, ' ', event_action) AS change, count() AS rows "
            f"FROM ${{database}}.events WHERE {osquery} AND event_action IN ('added', 'removed') "
            "GROUP BY time, change ORDER BY time"),
            "Rows osquery reports added to or removed from each query's result."),
        panel("table", "Latest host changes", "short", sql(
            "SELECT timestamp, host_name, event_dataset, event_action, process_executable, destination_port, user_name, "
            f"file_path, process_command_line FROM ${{database}}.events WHERE {osquery} AND event_action IN ('added', 'removed') "
            "ORDER BY timestamp DESC LIMIT 100", "table"),
            "The newest differential rows, newest first."),
        panel("table", "Listening ports now", "short", sql(
            state_now("view_listening_ports_per_host", "host_name, destination_port, process_executable", "listeners"),
            "table"), "Open listening ports per host and binary (view listening_ports_per_host).", w=8),
        panel("table", "Local users now", "short", sql(
            state_now("view_local_users_per_host", "host_name, user_name", "accounts"), "table"),
            "Local accounts per host (view local_users_per_host).", w=8),
        panel("table", "Autoruns now", "short", sql(
            state_now("view_autoruns_per_host", "host_name, file_path", "entries"), "table"),
            "Cron, startup and launch entries per host (view autoruns_per_host).", w=8),
        panel("timeseries", "Honeypot activity", "short", sql(
            "SELECT $__timeInterval(timestamp) AS time, event_action, count() AS events "
            f"FROM ${{database}}.events WHERE {cowrie} GROUP BY time, event_action ORDER BY time"),
            "Cowrie events by kind (connections, logins, commands, downloads)."),
        panel("table", "Honeypot sessions", "short", sql(
            "SELECT window_start AS day, session, source_ip, sum(records * sign) AS records, sum(usernames * sign) AS usernames, "
            "sum(commands * sign) AS commands, sum(downloads * sign) AS downloads FROM ${database}.view_honeypot_sessions "
            "WHERE $__timeFilter(window_start) GROUP BY day, session, source_ip HAVING sum(sign) > 0 "
            "ORDER BY commands DESC, downloads DESC, records DESC LIMIT 50", "table"),
            "Sessions per day with their logins, commands and downloads (view honeypot_sessions)."),
        panel("bargauge", "Honeypot source addresses", "short", sql(
            "SELECT toString(source_ip) AS source, uniqExact(ext['session']) AS sessions "
            f"FROM ${{database}}.events WHERE {cowrie} AND source_ip IS NOT NULL "
            "GROUP BY source ORDER BY sessions DESC, source LIMIT 15", "table"),
            "Addresses that opened the most sessions.", w=8,
            options={"orientation": "horizontal", "displayMode": "gradient"}),
        panel("table", "Honeypot commands", "short", sql(
            "SELECT process_command_line AS command, count() AS times, uniqExact(ext['session']) AS sessions "
            f"FROM ${{database}}.events WHERE {cowrie} AND event_dataset = 'cowrie.command' "
            "GROUP BY command ORDER BY times DESC, command LIMIT 30", "table"),
            "What attackers typed.", w=8),
        panel("table", "Honeypot downloads", "short", sql(
            "SELECT timestamp, toString(source_ip) AS source, url_full AS url, ext['shasum'] AS sha256 "
            f"FROM ${{database}}.events WHERE {cowrie} AND event_dataset = 'cowrie.file' "
            "ORDER BY timestamp DESC LIMIT 50", "table"),
            "Files sessions fetched, with their hashes.", w=8),
    ], span="now-24h")


DASHBOARDS = {"pipeline.json": pipeline, "detections.json": detections, "cases.json": cases, "hosts.json": hosts}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that the files are current")
    args = ap.parse_args()
    stale = []
    for name, build in DASHBOARDS.items():
        text = json.dumps(build(), indent=2, sort_keys=True) + "\n"
        path = os.path.join(OUT, name)
        if args.check:
            if not os.path.exists(path) or open(path).read() != text:
                stale.append(name)
        else:
            os.makedirs(OUT, exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    if stale:
        sys.exit(f"helm/ward/dashboards: {', '.join(stale)} differ from scripts/dashboards.py: run it")


if __name__ == "__main__":
    main()
