#!/usr/bin/env bash
# Builds weft-agent (static release) and agent-bench, the upstream etcd and
# kube-apiserver (cached), then runs the benchmark as root:
#   bench/agent.sh [--nodes N] [--adds K] [--backend vxlan|routes] [--idle-seconds S] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps >/dev/null
k8s=$(e2e/build-tools)
bin=$(scripts/build-static)
exec "$bin/agent-bench" --agent "$bin/weft-agent" --k8s-bin "$k8s" "$@"
