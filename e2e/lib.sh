# Helpers shared by the e2e tests and the demo (sourced, not run).
# shellcheck shell=bash

E2E=${E2E:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
# kubectl for the cluster under test: the local cluster unless $KUBECTL says otherwise (kind).
K() { if [[ -n ${KUBECTL:-} ]]; then $KUBECTL "$@"; else "$E2E/cluster" kubectl "$@"; fi; }
ECHO_IMAGE=${ECHO_IMAGE:-registry.weft.test/weft-echo:e2e}

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

# What a failed check on a node needs to be understood from CI's output alone:
# its pods, the agent's and the plugin's last words, kubelet's last errors.
node_report() { # node
  local n=$1 dir=${WEFT_CLUSTER_DIR:-/var/tmp/weft-cluster}
  # A subshell without errexit: a report that stops at its first empty grep
  # would also swallow the failure message after it.
  (
    set +e +o pipefail
    echo "--- pods on $n"
    K get pods -A -o wide --field-selector "spec.nodeName=$n" 2>&1 | head -30
    local agent
    agent=$(K -n kube-system get pods -l app.kubernetes.io/name=weft --field-selector "spec.nodeName=$n" -o name 2>/dev/null | head -1)
    echo "--- weft-agent $agent on $n (last 25 lines; then its previous run's last 10)"
    K -n kube-system logs --tail 25 "$agent" 2>&1
    K -n kube-system logs --previous --tail 10 "$agent" 2>&1
    echo "--- weft CNI log on $n (last 10 lines)"
    tail -n 10 "$dir/nodes/$n/var/log/weft/cni.log" 2>&1
    echo "--- kubelet errors on $n (last 10)"
    grep '^E' "$dir/logs/kubelet-$n.log" 2>/dev/null | grep -Ev 'eviction_manager|cri_stats_provider' | tail -n 10 | cut -c1-400
    echo "--- containerd errors on $n (last 5)"
    grep 'level=error' "$dir/logs/containerd-$n.log" 2>/dev/null | tail -n 5 | cut -c1-400
  ) >&2
  return 0
}

# Polls a command until it succeeds, at most $1 seconds.
eventually() { # seconds cmd…
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do ((SECONDS < deadline)) || return 1; sleep 1; done
}

# The echo Deployment, spread over the nodes.
deploy_echo() { # name replicas
  K apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1}
spec:
  replicas: $2
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      terminationGracePeriodSeconds: 1
      # Honor: the control plane's NoSchedule taint keeps it out of the count.
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, nodeTaintsPolicy: Honor, labelSelector: {matchLabels: {app: $1}}}
      containers:
      - name: echo
        image: $ECHO_IMAGE
        imagePullPolicy: IfNotPresent
        ports: [{containerPort: 8080}]
YAML
}

# How many nodes take ordinary pods (all but a tainted control plane).
worker_count() { K get nodes -l '!node-role.kubernetes.io/control-plane' --no-headers | wc -l; }

all_running() { # app count
  [[ $(K get pods -l "app=$1" --field-selector=status.phase=Running --no-headers 2>/dev/null | grep -c ' 1/1 ') == "$2" ]]
}

# "name node ip0 [ip1]" per pod: its addresses in podIPs order (IPv4 first when dual-stack).
pod_table() { # app
  K get pods -l "app=$1" -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName} {range .status.podIPs[*]}{.ip} {end}{"\n"}{end}'
}

reach() { # pod ip
  K exec "$1" -- ping -c1 -W2 "$2" >/dev/null 2>&1
}

# The local cluster's weft IPAM store against the pods of a node.
reservations() { # node -> addresses reserved in weft's IPAM store
  find "${WEFT_CLUSTER_DIR:-/var/tmp/weft-cluster}/nodes/$1/run/weft/ipam/weft" -maxdepth 1 -type f -regex '.*/[0-9a-f.:]+' \
    -printf '%f\n' 2>/dev/null | sort
}
pod_ips_on() { # node -> addresses of its pod-network pods
  K get pods -A --field-selector "spec.nodeName=$1" \
    -o go-template='{{range .items}}{{if not .spec.hostNetwork}}{{range .status.podIPs}}{{.ip}}{{"\n"}}{{end}}{{end}}{{end}}' | sort
}
no_leak_on() { [[ $(reservations "$1") == "$(pod_ips_on "$1")" ]]; }
