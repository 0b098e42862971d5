"""Checks Ward's Helm chart with Helm's own code (helm-python-sdk binds Helm 4's Go SDK) and the
rendered objects with Kubernetes' own API schemas (kubernetes-models, through node):

    python3 tests/helm/check_chart.py CHART NODE_MODULES_DIR OUT_DIR

lints the chart (strict), validates value sets against values.schema.json (good ones accepted,
bad ones refused with the offending key), renders the default values and several realistic
sets, validates every rendered object, checks what the renders must say, and writes each
set's objects to OUT_DIR/<set>.json for the test that runs them. Exits non-zero on a failure.
"""
import json
import subprocess
import sys

import helm_python as helm
import yaml

chart_dir, modules, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


report = helm.lint(chart_dir, strict=True)
check(not report["errors"] and all(m["severity"] < 2 for m in report["messages"]), f"lint (strict): {report}")

chart = helm.Chart.load(chart_dir)
SETS = {
    "default": {},
    "three-replicas": {"replicas": 3, "workers": 1, "peerTimeout": "3s"},
    "existing-claim": {"checkpoints": {"existingClaim": "ward-nfs", "interval": "2s"}},
    "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                   "dashboards": {"namespace": "monitoring", "folder": ""}},
    "no-dashboards": {"dashboards": {"enabled": False}},
    "secrets": {
        "clickhouse": {"url": "https://ch.example:8443", "existingSecret": "ward-clickhouse"},
        "kafka": {"brokers": "k1:9093,k2:9093", "securityProtocol": "sasl_ssl", "existingSecret": "ward-kafka"},
        "admin": {"existingSecret": "ward-admin"},
        "rules": {"files": {"local.yml": "title: x\nlogsource: {product: windows}\ndetection: {sel: {EventID: 1}, condition: sel}\n"}},
        "enrichment": {"files": {"indicators.txt": "198.51.100.7\n"}},
    },
}
# Checkpoints and Parquet in S3, credentials from a Secret, a role on a service account: no
# shared volume at all.
SETS["object-storage"] = {
    "objectStorage": {"url": "s3://ward-data/prod", "endpoint": "https://minio.example:9000", "region": "eu-west-1",
                      "existingSecret": "ward-s3"},
    "serviceAccount": {"create": True, "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/ward"}},
}
# What tests/helm.rs runs in network namespaces: three pods' processes on a generated stream.
RUN_SPEC = """name: chart-run
settings:
  epoch_interval_ms: 100
  admin_listen: "${WARD_ADMIN_LISTEN}"
  checkpoint: {dir: "${WARD_CHECKPOINT_DIR}", interval: "${WARD_CHECKPOINT_INTERVAL}", retain: 2}
sources:
  - {id: gen, type: generator, count: 40000, rate: 4000, seed: 5, malformed_every: 2000}
operators:
  - {id: parse, type: parse, inputs: [gen], syslog_year: 2026}
  - {id: normalize, type: normalize, inputs: [parse]}
  - {id: dedup, type: dedup, inputs: [normalize]}
  - {id: detect, type: sigma-match, inputs: [dedup], rules: ["${WARD_RULES:-/usr/share/ward/rules/sigma/ward}"], include_event: false}
  - {id: correlate, type: correlate, inputs: [detect], rules: ["${WARD_RULES:-/usr/share/ward/rules/sigma/ward}"]}
sinks:
  - {id: events, type: parquet, inputs: [dedup], path: "${WARD_OUT}/events", partition_by: hour}
  - {id: alerts, type: jsonl, inputs: [correlate], path: "${WARD_OUT}/alerts.jsonl"}
  - {id: rejected, type: jsonl, inputs: [quarantine], path: "${WARD_OUT}/quarantine.jsonl"}
"""
SETS["netns-run"] = {
    "replicas": 3,
    "workers": 1,
    "peerTimeout": "3s",
    "connectTimeout": "60s",
    "checkpoints": {"interval": "300ms"},
    "pipeline": {"spec": RUN_SPEC},
}
BAD = {
    "replicas": {"replicas": 0},
    "workers": {"workers": "two"},
    "peerTimeout": {"peerTimeout": "ten seconds"},
    "securityProtocol": {"kafka": {"securityProtocol": "telnet"}},
    "url": {"clickhouse": {"url": "clickhouse:8123"}},
    "unknown": {"replica": 3},
    "dashboards": {"dashboards": {"enabled": "yes"}},
    "objectStorage": {"objectStorage": {"url": "ftp://bucket/x"}},
    "endpoint": {"objectStorage": {"endpoint": "https://user:secret@minio:9000"}},
}
for name, values in BAD.items():
    try:
        chart.validate_schema(chart.merge_values(values))
        check(False, f"schema refuses bad values {values}")
    except helm.HelmError as e:
        check(name in str(e) or "additional" in str(e).lower(), f"schema refuses {values}: {str(e)[:160]}")


def objects(rendered):
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


annotations = {}
for name, values in SETS.items():
    chart.validate_schema(chart.merge_values(values))
    rendered = chart.render(values, name="ward", namespace="detect", is_install=True)
    docs = objects(rendered)
    r = subprocess.run(["node", f"{chart_dir}/../../tests/helm/validate-k8s.mjs", modules],
                       input=json.dumps(docs), capture_output=True, text=True)
    check(r.returncode == 0, f"{name}: every object valid for Kubernetes' schemas:\n{r.stdout}{r.stderr}")
    kinds = {d["kind"]: d for d in docs}
    sts = kinds["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = env_of(c)
    replicas = values.get("replicas", 3)
    check(c["command"] == ["/usr/local/bin/ward"] and c["args"][:2] == ["run", "/etc/ward/spec/pipeline.yaml"], f"{name}: command")
    peers = env["WARD_PEERS"].split(",")
    check(len(peers) == replicas and peers[1].startswith("ward-1.ward-peers.detect.svc"), f"{name}: peers {peers}")
    check(sts["spec"]["podManagementPolicy"] == "Parallel" and sts["spec"]["serviceName"] == "ward-peers", f"{name}: parallel pods, headless service")
    check("--process-from-hostname" in c["args"], f"{name}: process index from the pod ordinal")
    headless = [d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    check(len(headless) == 1 and headless[0]["spec"]["publishNotReadyAddresses"], f"{name}: headless service publishes not-ready pods")
    sc = c["securityContext"]
    check(pod["securityContext"]["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"],
          f"{name}: restricted security context")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{name}: probes")
    spec_text = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ward-spec"][0]["data"]["pipeline.yaml"]
    if "objectStorage" in values:
        volumes = [v["name"] for v in pod["volumes"]]
        check("shared" not in volumes and "PersistentVolumeClaim" not in kinds, f"{name}: no shared volume, no claim: {volumes}")
        check(env["WARD_CHECKPOINT_DIR"] == "s3://ward-data/prod/checkpoints" and env["WARD_PARQUET"] == "s3://ward-data/prod/parquet",
              f"{name}: checkpoints and Parquet under the URL")
        check(env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "ward-s3", "key": "secret-access-key"}}
              and env["AWS_ENDPOINT_URL"] == "https://minio.example:9000" and env["AWS_REGION"] == "eu-west-1",
              f"{name}: AWS environment, the secret by reference")
        sa = kinds.get("ServiceAccount", {})
        check(pod.get("serviceAccountName") == "ward" and sa.get("metadata", {}).get("annotations", {}).get("eks.amazonaws.com/role-arn"),
              f"{name}: a service account with the role annotation")
        check("type: jsonl" not in spec_text and "WARD_CASES_TOPIC" in spec_text and "{{" not in spec_text,
              f"{name}: cases and quarantine to Kafka topics, nothing on a volume")
    else:
        claim = [v for v in pod["volumes"] if v["name"] == "shared"][0]["persistentVolumeClaim"]["claimName"]
        want_claim = values.get("checkpoints", {}).get("existingClaim") or "ward-shared"
        check(claim == want_claim and (("PersistentVolumeClaim" in kinds) == (want_claim == "ward-shared")), f"{name}: checkpoint claim {claim}")
        check("ServiceAccount" not in kinds and "serviceAccountName" not in pod, f"{name}: the namespace's default service account")
    check(("ServiceMonitor" in kinds) == bool(values.get("serviceMonitor", {}).get("enabled")), f"{name}: ServiceMonitor only when enabled")
    check("PodDisruptionBudget" in kinds, f"{name}: PodDisruptionBudget")
    # The dashboards: one ConfigMap each with the sidecar's label, holding the shipped JSON.
    boards = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    if values.get("dashboards", {}).get("enabled", True):
        shipped = {f"ward-{n}": json.load(open(f"{chart_dir}/dashboards/{n}")) for n in ("pipeline.json", "detections.json", "cases.json", "hosts.json")}
        got = {k: json.loads(v) for b in boards for k, v in b["data"].items()}
        check(got == shipped, f"{name}: the dashboards' ConfigMaps hold the shipped JSON: {sorted(got)}")
        ns = values.get("dashboards", {}).get("namespace")
        check(all(b["metadata"].get("namespace") == ns for b in boards), f"{name}: dashboards in namespace {ns}")
        folder = values.get("dashboards", {}).get("folder", "Ward")
        check(all(b["metadata"].get("annotations", {}).get("grafana_folder") == (folder or None) for b in boards),
              f"{name}: dashboards' folder {folder!r}")
    else:
        check(not boards, f"{name}: no dashboards when disabled")
    # Credentials only by reference: no password or token value anywhere in the objects.
    text = json.dumps(docs)
    if name == "secrets":
        check(env["WARD_CLICKHOUSE_PASSWORD"] == {"secretKeyRef": {"name": "ward-clickhouse", "key": "password"}}, f"{name}: ClickHouse password from its Secret")
        check(env["WARD_KAFKA_PASSWORD"]["secretKeyRef"]["name"] == "ward-kafka" and env["WARD_ADMIN_TOKEN"]["secretKeyRef"]["name"] == "ward-admin", f"{name}: Kafka and admin secrets")
        check(env.get("WARD_RULES") == "/etc/ward/rules" and "ward-rules" in text and "ward-enrichment" in text, f"{name}: rules and enrichment ConfigMaps mounted")
    check("Secret" not in kinds, f"{name}: the chart creates no Secret")
    annotations[name] = sts["spec"]["template"]["metadata"]["annotations"]
    with open(f"{out_dir}/{name}.json", "w") as f:
        json.dump(docs, f)
    # The spec the pods run.
    with open(f"{out_dir}/{name}.pipeline.yaml", "w") as f:
        f.write([d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ward-spec"][0]["data"]["pipeline.yaml"])

# New rules do not restart the pods (they hot-reload from the mounted ConfigMap); a new spec does.
check(annotations["secrets"] == annotations["default"], "new rules leave the pod template alone (no restart)")
check(annotations["netns-run"]["checksum/spec"] != annotations["default"]["checksum/spec"], "a new spec changes checksum/spec")
print(f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)
