#!/usr/bin/env bash
# Builds weft (static release) and cni-bench, then runs the benchmark as root.
#   bench/cni.sh [--pods N] [--rounds R] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps >/dev/null
bin=$(scripts/build-static)
exec "$bin/cni-bench" "$bin/weft" "$@"
