#!/usr/bin/env python3
"""Kafka benchmarks for Ward (issue: Kafka in, exactly-once checkpoints, three sinks).

    python3 bench/kafka.py [--events 500000] [--ward target/release/ward] [--only NAME]

Measures, on a Tansu broker and a ClickHouse 18.16 server started on 127.0.0.1:
  broker     Tansu's own produce and consume rates (librdkafka via confluent-kafka): the bound.
  pipeline   Kafka -> parse -> normalize -> enrich -> dedup -> sigma -> correlate -> sla ->
             ClickHouse (events, alerts) + Parquet + alerts topic (pipelines/detection.yaml),
             checkpoints every 1 s: events/s and CPU per event of the ward process.
  latency    produce -> alert visible to a read_committed consumer (detection alerts on the
             alerts topic, checkpoints every 1 s): p50 / p99.
  recovery   kill -9 during a live run, restart: time to the first new alert on the topic.
"""

import argparse
import importlib.util
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("chaos", os.path.join(REPO, "scripts", "chaos.py"))
chaos = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chaos)
log = chaos.log


def broker_bound(s, n):
    """librdkafka's produce and consume rates against the broker, with generator-sized records."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    chaos.create_topics(s.brokers, [("bound", 4)])
    value = b'{"Event":{"System":{"Provider":{"#attributes":{"Name":"Microsoft-Windows-Sysmon"}},"EventID":1}},"pad":"' + b"x" * 300 + b'"}'
    p = Producer({"bootstrap.servers": s.brokers, "linger.ms": 20, "compression.type": "lz4",
                  "queue.buffering.max.messages": 1000000})
    t = time.time()
    for i in range(n):
        while True:
            try:
                p.produce("bound", value, key=str(i))
                break
            except BufferError:
                p.poll(0.01)
    p.flush(120)
    produce = n / (time.time() - t)
    c = Consumer({"bootstrap.servers": s.brokers, "group.id": "bound", "enable.auto.commit": False,
                  "fetch.max.bytes": 52428800})
    c.assign([TopicPartition("bound", i, 0) for i in range(4)])
    got, t = 0, time.time()
    while got < n and time.time() - t < 300:
        got += sum(1 for m in c.consume(10000, 0.5) if not m.error())
    consume = got / (time.time() - t)
    c.close()
    log(f"broker bound: produce {produce:,.0f} msg/s, consume {consume:,.0f} msg/s ({n:,} records of {len(value)} B)")
    return produce, consume


def produce_input(ward, s, work, topic, n, rate=0):
    path = chaos.write(os.path.join(work, f"produce-{topic}.yaml"), chaos.PRODUCER.format(
        events=n, rate=rate, brokers=s.brokers).replace("topic: input", f"topic: {topic}"))
    return subprocess.Popen([ward, "run", path, "-q"])


def pipeline(ward, s, work, n, workers):
    chaos.create_topics(s.brokers, [("input", 4), ("alerts", 3)])
    s.apply(os.path.join(REPO, "pipelines/clickhouse/schema-18.16.sql"))
    s.apply(os.path.join(REPO, "pipelines/clickhouse/views-18.16.sql"))
    t = time.time()
    if produce_input(ward, s, work, "input", n).wait() != 0:
        sys.exit("producer failed")
    log(f"produced {n:,} generator records into `input` in {time.time() - t:.1f}s")
    idle = 3
    results = {}
    # The shipped production spec (pipelines/detection.yaml, demo rules), as the chaos test runs
    # it: checkpoints every 1 s, ClickHouse events and alerts, Parquet, the alerts topic.
    label = "checkpoints every 1 s"
    for table in ("events", "alerts"):
        s.query(f"TRUNCATE TABLE ward.{table}")
    out = os.path.join(work, "pipeline")
    os.makedirs(out, exist_ok=True)
    env = chaos.detection_env(s, os.path.join(out, "checkpoints"), out, "ward", "alerts", 3)
    env.update(WARD_STOP_WHEN_IDLE=f"{idle}s", WARD_EPOCH_INTERVAL_MS="200")
    t = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([ward, "run", chaos.DETECTION, "--workers", str(workers), "-q"], env=env,
                       capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.time() - t
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if r.returncode != 0:
        sys.exit(f"pipeline failed: {r.stderr[-2000:]}")
    rows = int(s.query("SELECT count() FROM ward.events FINAL"))
    rate = n / (wall - idle)
    results[label] = rate
    results[label + " cpu"] = cpu / n
    log(f"pipeline, {label}: {n:,} records in {wall - idle:.1f}s = {rate:,.0f} events/s, "
        f"{cpu * 1e6 / n:.1f} µs CPU per event ({rows:,} rows in ClickHouse)")
    return results


class AlertWatcher(threading.Thread):
    """A read_committed consumer of the alerts topic, noting when each record became visible."""

    def __init__(self, brokers, topic):
        super().__init__(daemon=True)
        from confluent_kafka import Consumer, TopicPartition

        self.c = Consumer({"bootstrap.servers": brokers, "group.id": f"watch-{time.time()}",
                           "isolation.level": "read_committed", "enable.auto.commit": False,
                           "fetch.wait.max.ms": 10})
        self.c.assign([TopicPartition(topic, p, 0) for p in range(3)])
        self.seen = []  # (wall time, value, ward-epoch)
        self.stop = False

    def run(self):
        while not self.stop:
            for m in self.c.consume(1000, 0.05):
                if not m.error():
                    epoch = int(dict(m.headers() or []).get("ward-epoch", b"0"))
                    self.seen.append((time.time(), m.value(), epoch))


def detection_spec(work, s, name, checkpoints):
    return chaos.write(os.path.join(work, f"{name}.yaml"), f"""name: {name}
settings:
  epoch_interval_ms: 100
  admin_listen: ""
  checkpoint: {{dir: {os.path.join(work, name + '-checkpoints')}, interval: 1s, retain: 3}}
sources:
  - {{id: kafka, type: kafka, brokers: "{s.brokers}", topics: [{name}-in], stop_when_idle: 10s}}
operators:
  - {{id: parse, type: parse, inputs: [kafka], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse], packs: [builtin:windows, builtin:linux-auth, builtin:zeek, builtin:fortigate, builtin:generic-json]}}
  - {{id: detect, type: sigma-match, inputs: [normalize], rules: [{REPO}/rules/sigma/ward], watch: false, include_event: false}}
sinks:
  - {{id: alerts, type: kafka, inputs: [detect], brokers: "{s.brokers}", topic: {name}-alerts}}
""")


def input_times(brokers, topic):
    """(partition, offset) -> produce timestamp (ms) of every record on `topic`."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": brokers, "group.id": f"times-{time.time()}", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(4)])
    out, last = {}, time.time()
    while time.time() - last < 3:
        for m in c.consume(10000, 0.2):
            if not m.error():
                out[(m.partition(), m.offset())] = m.timestamp()[1]
                last = time.time()
    c.close()
    return out


def latency(ward, s, work, seconds, rate):
    import json

    chaos.create_topics(s.brokers, [("latency-in", 4), ("latency-alerts", 3)])
    watcher = AlertWatcher(s.brokers, "latency-alerts")
    watcher.start()
    pipe = subprocess.Popen([ward, "run", detection_spec(work, s, "latency", True), "--workers", "2", "-q"])
    time.sleep(3)  # the pipeline is up and reading before records flow
    prod = produce_input(ward, s, work, "latency-in", seconds * rate, rate)
    prod.wait()
    pipe.wait()
    time.sleep(2)
    watcher.stop = True
    produced = input_times(s.brokers, "latency-in")
    lat = []
    for seen, value, _ in watcher.seen:
        origin = json.loads(value)["origin"]
        topic, part = origin["partition"].rsplit("/", 1)
        ts = produced.get((int(part), origin["offset"]))
        if ts is not None:
            lat.append(seen - ts / 1000.0)
    lat.sort()
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    log(f"latency produce -> alert visible (read_committed), {len(lat):,} alerts at {rate:,}/s input, "
        f"checkpoints every 1 s: p50 {p50:.2f}s, p99 {p99:.2f}s (goal p99 <= 2 s)")
    return p50, p99


def recovery(ward, s, work, kills):
    chaos.create_topics(s.brokers, [("recovery-in", 4), ("recovery-alerts", 3)])
    watcher = AlertWatcher(s.brokers, "recovery-alerts")
    watcher.start()
    prod = produce_input(ward, s, work, "recovery-in", 2000 * (8 * kills + 20), 2000)
    spec = detection_spec(work, s, "recovery", True)
    times = []
    p = subprocess.Popen([ward, "run", spec, "--workers", "2", "-q"])
    ckdir = os.path.join(work, "recovery-checkpoints")
    for _ in range(kills):
        time.sleep(6)
        p.send_signal(signal.SIGKILL)
        p.wait()
        # New output: alerts of checkpoints after the one the restart resumes from (not the
        # records recovery re-sends for checkpoints that were durable before the kill).
        resumed = max((int(d[4:]) for d in os.listdir(ckdir) if os.path.exists(os.path.join(ckdir, d, "MANIFEST.json"))), default=-1)
        seen_before = len(watcher.seen)
        t = time.time()
        p = subprocess.Popen([ward, "run", spec, "--workers", "2", "-q"])
        first = None
        while first is None and time.time() - t < 60:
            first = next((w for w, _, e in watcher.seen[seen_before:] if e > resumed), None)
            time.sleep(0.01)
        if first is not None:
            times.append(first - t)
    p.send_signal(signal.SIGKILL)
    p.wait()
    prod.kill()
    watcher.stop = True
    log(f"recovery after kill -9 to the first alert of a new checkpoint on the topic (read_committed): "
        f"median {statistics.median(times):.2f}s, max {max(times):.2f}s over {len(times)} kills (goal <= 5 s)")
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ward", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "release", "ward"))
    ap.add_argument("--only", choices=["broker", "pipeline", "latency", "recovery"])
    args = ap.parse_args()
    import tempfile

    work = tempfile.mkdtemp(prefix="ward-bench-kafka-")
    s = chaos.Services(work)
    try:
        if args.only in (None, "broker"):
            broker_bound(s, args.events)
        if args.only in (None, "pipeline"):
            pipeline(args.ward, s, work, args.events, args.workers)
        if args.only in (None, "latency"):
            latency(args.ward, s, work, 20, 2000)
        if args.only in (None, "recovery"):
            recovery(args.ward, s, work, 5)
    finally:
        s.stop()


if __name__ == "__main__":
    main()
