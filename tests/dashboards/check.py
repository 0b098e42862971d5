"""Checks the shipped Grafana dashboards (helm/ward/dashboards) for tests/dashboards.rs.

    check.py conventions DASHBOARD_DIR
    check.py prometheus DASHBOARD_DIR PROMETHEUS_PORT JOB
    check.py clickhouse DASHBOARD_DIR CLICKHOUSE_HTTP_PORT STATEMENTS_JSON WORK_DIR

`conventions`: data sources are variables, every panel has a unit and a description, the
Prometheus dashboards offer $pipeline and $process. `prometheus`: every Prometheus query of every
panel, evaluated by the Prometheus server at the newest moment it scraped the job, returns series.
`clickhouse`: copies the tables a real run filled in ClickHouse 18.16 into chdb (the modern
engine) created from the shipped modern schema (STATEMENTS_JSON), then runs every ClickHouse
query of every panel there: each must return rows. Prints one line per query; exits 1 on a failure.
"""
import json
import os
import re
import sys
import urllib.parse
import urllib.request

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def dashboards(d):
    return {n: json.load(open(os.path.join(d, n))) for n in sorted(os.listdir(d)) if n.endswith(".json")}


def targets(board, kind):
    for p in board["panels"]:
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("type") == kind:
                yield p["title"], t


def conventions(d):
    boards = dashboards(d)
    check(len(boards) >= 4, f"dashboards shipped: {sorted(boards)}")
    uids = [b["uid"] for b in boards.values()]
    check(len(set(uids)) == len(uids), f"unique uids {uids}")
    for name, b in boards.items():
        check(b["title"].startswith("Ward / ") and b.get("refresh") and "ward" in b.get("tags", []),
              f"{name}: title, tags and refresh ({b['title']}, {b.get('refresh')})")
        names = {v["name"]: v for v in b["templating"]["list"]}
        kinds = {t["datasource"]["type"] for p in b["panels"] for t in p["targets"]}
        for p in b["panels"]:
            uid = p["datasource"]["uid"]
            check(uid.startswith("${") and uid[2:-1] in names and names[uid[2:-1]]["type"] == "datasource",
                  f"{name} / {p['title']}: data source from a variable ({uid})")
            check(bool(p["fieldConfig"]["defaults"].get("unit")), f"{name} / {p['title']}: a unit")
            check(bool(p.get("description")), f"{name} / {p['title']}: a description")
        if "prometheus" in kinds:
            check("pipeline" in names and "process" in names, f"{name}: $pipeline and $process variables")
            for title, t in targets(b, "prometheus"):
                check('job=~"$pipeline"' in t["expr"] and 'process=~"$process"' in t["expr"],
                      f"{name} / {title}: filtered by $pipeline and $process")


def prom_get(port, path, **params):
    url = f"http://127.0.0.1:{port}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {params}: {body}")
    return body["data"]


def prometheus(d, port, job):
    # The newest moment the job was up: queries are evaluated there (the run has ended since).
    status = prom_get(port, "/api/v1/query", query=f'max_over_time(timestamp(up{{job="{job}"}} == 1)[10m:1s])')
    check(bool(status["result"]), f"Prometheus scraped job {job}")
    at = float(status["result"][0]["value"][1])
    samples = prom_get(port, "/api/v1/query", query=f'count_over_time(up{{job="{job}"}}[10m])', time=at)
    scrapes = int(samples["result"][0]["value"][1])
    check(scrapes >= 3, f"Prometheus scraped job {job} at least 3 times ({scrapes}): rates need two samples")
    print(f"     evaluating at {at} after {scrapes} scrapes")
    for name, b in dashboards(d).items():
        for title, t in targets(b, "prometheus"):
            expr = (t["expr"].replace("$__rate_interval", "15s").replace("$__range", "5m")
                    .replace("$pipeline", job).replace("$process", ".*"))
            try:
                result = prom_get(port, "/api/v1/query", query=expr, time=at)["result"]
                check(len(result) > 0, f"{name} / {title} [{t['refId']}]: {len(result)} series")
            except Exception as e:
                check(False, f"{name} / {title} [{t['refId']}]: {e}")


def clickhouse(d, http_port, statements, work):
    from chdb import session

    s = session.Session(os.path.join(work, "chdb"))
    for stmt in json.load(open(statements)):
        s.query(stmt)
    tables = s.query("SELECT name FROM system.tables WHERE database = 'ward' AND engine NOT IN "
                     "('MaterializedView') AND name NOT LIKE '%_inserted' AND name NOT LIKE '.inner%' "
                     "AND name != 'sla' ORDER BY name", "CSV").data().split()
    for table in [t.strip('"') for t in tables]:
        cols = s.query(f"SELECT name, type FROM system.columns WHERE database = 'ward' AND table = '{table}' "
                       "ORDER BY position", "JSONCompact").data()
        cols = json.loads(cols)["data"]
        url = f"http://127.0.0.1:{http_port}/?" + urllib.parse.urlencode(
            {"query": f"SELECT * FROM ward.{table} FORMAT JSONEachRow"})
        with urllib.request.urlopen(url, timeout=60) as r:
            rows = [json.loads(l) for l in r.read().decode().splitlines() if l]
        maps = [n for n, t in cols if t.startswith("Map(")]
        path = os.path.join(work, f"{table}.jsonl")
        with open(path, "w") as f:
            for row in rows:
                for m in maps:
                    # ClickHouse 18.16 has no Map: the schema keeps the pairs as JSON text.
                    value = json.loads(row[m]) if row.get(m) else {}
                    row[m] = dict(value) if isinstance(value, list) else value
                f.write(json.dumps(row) + "\n")
        if rows:
            structure = ", ".join(f"`{n}` {t}" for n, t in cols).replace("'", "\\'")
            s.query(f"INSERT INTO ward.{table} SELECT * FROM file('{path}', 'JSONEachRow', '{structure}')")
        if table.startswith("view_"):
            # Collapsing may cancel a row and its retraction on insert: the net signs stay.
            got = s.query(f"SELECT sum(sign) FROM ward.{table}", "CSV").data().strip() or "0"
            want = sum(int(r["sign"]) for r in rows)
        else:
            got, want = s.query(f"SELECT count() FROM ward.{table}", "CSV").data().strip(), len(rows)
        check(int(got) == want, f"ward.{table}: {len(rows)} rows copied from ClickHouse 18.16 ({got} = {want} in chdb)")
        if int(got) != want and rows:
            print("     first row:", json.dumps(rows[0])[:600])
    for name, b in dashboards(d).items():
        for title, t in targets(b, "grafana-clickhouse-datasource"):
            q = t["rawSql"].replace("${database}", "ward")
            q = re.sub(r"\$__timeFilter\((\w+)\)",
                       r"(\1 >= toDateTime64('2000-01-01 00:00:00', 3, 'UTC') AND \1 <= toDateTime64('2100-01-01 00:00:00', 3, 'UTC'))", q)
            q = re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(toDateTime(\1), INTERVAL 60 second)", q)
            check("$" not in q, f"{name} / {title}: every macro expanded")
            try:
                rows = s.query(q, "JSONCompact").data()
                n = len(json.loads(rows)["data"])
                check(n > 0, f"{name} / {title}: {n} rows")
            except Exception as e:
                check(False, f"{name} / {title}: {e}\n     {q}")


def main():
    what, d = sys.argv[1], sys.argv[2]
    if what == "conventions":
        conventions(d)
    elif what == "prometheus":
        prometheus(d, int(sys.argv[3]), sys.argv[4])
    elif what == "clickhouse":
        clickhouse(d, int(sys.argv[3]), sys.argv[4], sys.argv[5])
    print(f"{len(failures)} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
