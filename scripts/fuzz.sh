#!/usr/bin/env bash
# Runs every fuzz target (parsers, the JSON document splitter, Sigma matching) for SECONDS
# seconds each (default 20). Sigma matching runs with a per-input time limit: an input that
# takes longer is a failure (super-linear matching).
# Needs cargo-fuzz; the stable toolchain is told to allow the sanitizer flags.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-target}-fuzz}
targets=$(sed -n 's/^name = "\([a-z_]*\)"/\1/p' fuzz/Cargo.toml)
cargo fuzz build -O
for t in $targets; do
  corpus=$(mktemp -d)
  cp fuzz/seeds/"$t"/* "$corpus"/
  echo "fuzz: $t for ${seconds}s"
  limits=""
  [ "$t" = sigma_match ] && limits="-timeout=5 -max_len=1048576"
  # shellcheck disable=SC2086
  cargo fuzz run -O "$t" "$corpus" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 $limits 2>&1 \
    | grep -E 'stat::number_of_executed_units|ERROR|panicked|SUMMARY' || true
  # A crash leaves an artifact and a non-zero exit; run the target once more to surface it.
  if ls fuzz/artifacts/"$t"/crash-* fuzz/artifacts/"$t"/timeout-* >/dev/null 2>&1; then
    echo "fuzz: $t found a crash:"; ls fuzz/artifacts/"$t"/; exit 1
  fi
  rm -rf "$corpus"
done
echo "fuzz: no crashes"
