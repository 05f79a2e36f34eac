#!/usr/bin/env bash
# Builds weft-agent (static release) and policy-bench, the upstream etcd and
# kube-apiserver (cached), then runs the benchmark as root:
#   bench/policy.sh [--pods P] [--policies Q] [--namespaces N] [--samples K] [--idle-seconds S] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps >/dev/null
k8s=$(e2e/build-tools)
bin=$(scripts/build-static)
exec "$bin/policy-bench" --agent "$bin/weft-agent" --k8s-bin "$k8s" "$@"
