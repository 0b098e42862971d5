#!/usr/bin/env python3
"""Ward's performance table in one command: CPU per event and events/s of every row.

    cargo build --release -p ward -p ward-bench
    python3 bench/perf.py [--events 1000000] [--workers 2] [--repeat 2] [--skip kafka,sigma]

Rows (CPU seconds of the `ward` process from its rusage, so load beside it does not count;
"per core" is 1 / CPU per event):
  ingest    generator -> parse -> normalize -> enrich -> Parquet (+ quarantine)   bench/specs/ingest.yaml
  detect    the same + dedup -> sigma-match (all SigmaHQ Windows rules + the demo rules)
            -> correlate -> alerts JSONL                                          bench/specs/detect.yaml
  views     detect + the demo's five live views -> view changes JSONL             bench/specs/views.yaml
            (the views' cost: its CPU per event vs detect's)
  view-state  a view's memory per live group: one group per event (bench/specs/view-state.yaml),
            peak RSS minus that of the same run with a handful of groups, per group
  sigma     the matcher alone, one thread: 100 rules vs all, and rsigma-eval side by side
            (`ward-bench sigma`)
  kafka     Tansu -> full pipeline -> ClickHouse + Parquet + alerts topic, checkpoints every
            1 s (`bench/kafka.py --only pipeline`)
  hunt      retro-hunt over the Parquet the ingest row writes (--hunt-events events): the
            parquet source alone on one thread, every column and a rule set's projection
            (`ward-bench parquet-read`), then `ward hunt` with every SigmaHQ Windows rule + the
            demo rules
Peak RSS is the process's maximum resident set (ru_maxrss). The best of --repeat runs is kept.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run_ward(ward, spec, events, workers, work, **extra_env):
    """One run of a bench spec: (wall s, CPU s, peak RSS MiB, records read)."""
    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, BENCH_EVENTS=str(events), BENCH_OUT=out, **extra_env)
    t = time.time()
    p = subprocess.Popen([ward, "run", spec, "--workers", str(workers)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.time() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{spec} failed:\n{err[-3000:]}")
    m = re.search(r"(\d+) records read", err)
    read = int(m.group(1)) if m else 0
    if read != events:
        sys.exit(f"{spec}: read {read} records, expected {events}:\n{err[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, read


def pipeline_row(name, ward, spec, args, work):
    best = None
    for i in range(args.repeat):
        wall, cpu, rss, n = run_ward(ward, spec, args.events, args.workers, work)
        us = cpu * 1e6 / n
        log(f"  {name} run {i + 1}: {n:,} events in {wall:.2f}s = {n / wall:,.0f} events/s, "
            f"{us:.2f} µs CPU/event, peak RSS {rss:,.0f} MiB")
        if best is None or us < best["us"]:
            best = {"us": us, "eps": n / wall, "rss": rss}
    return best


def view_state_row(ward, args, work):
    """Bytes per live group of a view: peak RSS grouped by event.id (one group per event) minus
    peak RSS grouped by event.kind (the same work, a handful of groups), per group."""
    spec = os.path.join(REPO, "bench", "specs", "view-state.yaml")
    rss = {}
    for group in ("event.id", "event.kind"):
        best = min(run_ward(ward, spec, args.events, args.workers, work, BENCH_VIEW_GROUP=group)[2]
                   for _ in range(args.repeat))
        rss[group] = best
        log(f"  view state, grouped by {group}: peak RSS {best:,.0f} MiB")
    groups = args.events
    return {"bytes": (rss["event.id"] - rss["event.kind"]) * 1024 * 1024 / groups, "groups": groups}


def sigma_rows(bench, args):
    cmd = [bench, "sigma", "--count", str(args.sigma_events), "--competitor-count", "10000",
           "--sizes", "100,all", "--repeat", "3", "--no-sigma-rust"]
    log("  " + " ".join(cmd))
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ward-bench sigma failed:\n{r.stderr[-3000:]}")
    rows = {"alone": []}
    alone = False
    for line in r.stdout.splitlines():
        if line.startswith(("Ward matcher alone", "side by side")):
            alone = line.startswith("Ward matcher alone")
        cols = line.split()
        if alone and len(cols) == 5 and cols[0].isdigit():
            rows["alone"].append((int(cols[0]), float(cols[2]), float(cols[3])))
    m = re.search(r"ward / rsigma-eval: ([\d.]+)x", r.stdout)
    rows["rsigma"] = float(m.group(1)) if m else None
    log("    " + "\n    ".join(r.stdout.strip().splitlines()))
    return rows


def hunt_rows(ward, bench, args, work):
    """The reader alone and `ward hunt` over the ingest row's Parquet of --hunt-events events."""
    spec = os.path.join(REPO, "bench", "specs", "ingest.yaml")
    log(f"hunt: writing {args.hunt_events:,} events of history with bench/specs/ingest.yaml")
    run_ward(ward, spec, args.hunt_events, args.workers, work)
    history = os.path.join(work, "history")
    shutil.rmtree(history, ignore_errors=True)
    shutil.move(os.path.join(work, "out", "out"), history)
    out = subprocess.run([bench, "parquet-read", "--events", history, "--repeat", str(args.repeat)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"ward-bench parquet-read failed:\n{out.stderr[-3000:]}")
    reader = []
    for line in out.stdout.splitlines():
        log("  " + line)
        m = re.search(r"parquet source, (.+?): (\d+) events in [\d.]+s = (\d+) events/s", line)
        if m:
            reader.append((m.group(1), int(m.group(3))))
    rules = [os.path.join(REPO, "rules", "sigmahq", "rules", "windows"), os.path.join(REPO, "rules", "sigma", "ward")]
    best = None
    for i in range(args.repeat):
        t = time.time()
        with tempfile.TemporaryFile(mode="w+") as err:
            p = subprocess.Popen([ward, "hunt", "--rules", *rules, "--events", history, "-w", str(args.workers),
                                  "--json", "-q"], stdout=subprocess.PIPE, stderr=err, text=True)
            stdout = p.stdout.read()
            _, status, usage = os.wait4(p.pid, 0)
            wall = time.time() - t
            if os.waitstatus_to_exitcode(status) != 0:
                err.seek(0)
                sys.exit(f"ward hunt failed:\n{err.read()[-3000:]}")
        import json
        summary = json.loads(stdout)
        n = summary["events"]
        cpu = usage.ru_utime + usage.ru_stime
        us = cpu * 1e6 / n
        log(f"  hunt run {i + 1}: {n:,} events in {wall:.2f}s = {n / wall:,.0f} events/s, {us:.2f} µs CPU/event, "
            f"{summary['alerts']:,} alerts")
        if best is None or us < best["us"]:
            best = {"us": us, "eps": n / wall, "wall": wall, "events": n, "alerts": summary["alerts"]}
    return reader, best


def kafka_row(ward, args):
    cmd = [sys.executable, os.path.join(REPO, "bench", "kafka.py"), "--only", "pipeline",
           "--events", str(args.events), "--workers", str(args.workers), "--ward", ward]
    log("  " + " ".join(cmd))
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench/kafka.py failed:\n{r.stderr[-3000:]}")
    m = re.search(r"pipeline, checkpoints every 1 s: .*?= ([\d,]+) events/s, ([\d.]+) µs CPU", r.stderr + r.stdout)
    if not m:
        sys.exit(f"no pipeline figure in bench/kafka.py's output:\n{r.stderr[-3000:]}")
    return {"eps": float(m.group(1).replace(",", "")), "us": float(m.group(2))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ward", default=os.path.join(TARGET, "release", "ward"))
    ap.add_argument("--bench", default=os.path.join(TARGET, "release", "ward-bench"))
    ap.add_argument("--events", type=int, default=1_000_000, help="generator records per pipeline run")
    ap.add_argument("--sigma-events", type=int, default=300_000, help="events for the matcher alone")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--hunt-events", type=int, default=1_000_000, help="events of history for the hunt rows")
    ap.add_argument("--skip", default="", help="rows to leave out: ingest,detect,views,view-state,sigma,kafka,hunt")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    for exe in (args.ward, args.bench):
        if not os.path.exists(exe):
            sys.exit(f"{exe} not found: cargo build --release -p ward -p ward-bench")
    work = tempfile.mkdtemp(prefix="ward-perf-")
    table = []
    try:
        for name, spec in (("ingest", "ingest.yaml"), ("detect", "detect.yaml"), ("views", "views.yaml")):
            if name not in skip:
                log(f"{name}: {args.events:,} events, {args.workers} workers, best of {args.repeat}")
                table.append((name, pipeline_row(name, args.ward, os.path.join(REPO, "bench", "specs", spec), args, work)))
        state = None
        if "view-state" not in skip:
            log(f"view-state: {args.events:,} groups (one per event), {args.workers} workers, best of {args.repeat}")
            state = view_state_row(args.ward, args, work)
        sigma = sigma_rows(args.bench, args) if "sigma" not in skip else None
        kafka = kafka_row(args.ward, args) if "kafka" not in skip else None
        hunt = hunt_rows(args.ward, args.bench, args, work) if "hunt" not in skip else None
    finally:
        shutil.rmtree(work, ignore_errors=True)

    goals = {"ingest": "≤ 3.3 µs", "detect": "≤ 7.0 µs", "views": "≤ 1.15 × detect"}
    print(f"\n| row | CPU per event | events/s per core | events/s ({args.workers} workers) | peak RSS | goal |")
    print("|---|---|---|---|---|---|")
    labels = {"ingest": "generator → parse → normalize → enrich → Parquet",
              "detect": "… + dedup → sigma-match (all Windows rules) → correlate → alerts",
              "views": "the detect row + 5 live views → view changes"}
    rows = dict(table)
    for name, r in table:
        extra = ""
        if name == "views" and "detect" in rows:
            extra = f" ({r['us'] / rows['detect']['us']:.2f} × detect)"
        print(f"| {labels[name]} | {r['us']:.2f} µs{extra} | {1e6 / r['us']:,.0f} | {r['eps']:,.0f} | {r['rss']:,.0f} MiB "
              f"| {goals[name]} |")
    if state:
        print(f"| a view's memory per live group ({state['groups']:,} groups, peak RSS difference) "
              f"| {state['bytes']:,.0f} bytes per group | | | | |")
    if kafka:
        print(f"| Kafka → full pipeline → ClickHouse + Parquet + alerts topic, 1 s checkpoints | {kafka['us']:.2f} µs "
              f"| {1e6 / kafka['us']:,.0f} | {kafka['eps']:,.0f} | | ≥ 252,000 events/s |")
    if hunt:
        reader, h = hunt
        for what, eps in reader:
            goal = "≥ 2,000,000/core" if "fields" in what else ""
            print(f"| parquet source alone, {what} (one thread) | {1e6 / eps:.3f} µs | {eps:,} | | | {goal} |")
        print(f"| `ward hunt`, all SigmaHQ Windows rules, {h['events']:,} events ({h['alerts']:,} alerts, "
              f"{h['wall']:.1f} s) | {h['us']:.2f} µs | {1e6 / h['us']:,.0f} | {h['eps']:,.0f} | | 10 M events < 60 s |")
    if sigma and sigma.get("alone"):
        (n_small, eps_small, ns_small), (n_all, eps_all, ns_all) = sigma["alone"][0], sigma["alone"][-1]
        print(f"| Sigma matcher alone, {n_small} rules | {ns_small / 1000:.2f} µs | {eps_small:,.0f} | | | |")
        print(f"| Sigma matcher alone, all {n_all} rules | {ns_all / 1000:.2f} µs | {eps_all:,.0f} | | | ≥ 500,000/core |")
        print(f"| all rules vs {n_small} rules, time per event | {ns_all / ns_small:.2f}× | | | | ≤ 2× |")
        if sigma.get("rsigma"):
            print(f"| Ward vs rsigma-eval, same events and rules | {sigma['rsigma']:.1f}× faster | | | | ≥ 50× |")


if __name__ == "__main__":
    main()
