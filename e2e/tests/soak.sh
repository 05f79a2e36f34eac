#!/usr/bin/env bash
# Soak: pod create/delete cycles spread over the workers, with two restarts
# of node2's agent and a reboot of node2 in the middle. Samples after every
# batch that no address is held by two pods; at the end each node's IPAM
# store holds exactly its live pods' addresses, and the agents that lived
# through the whole soak (control-plane's and node1's) kept their RSS and
# open file descriptors within 10 % above their baseline (each the smallest
# of five samples a second apart, so a transient is not taken for either).
#   e2e/tests/soak.sh [--cycles N] [--batch B]     (defaults: 2000 cycles, batches of 20)
# Uses the cluster that is up, else brings one up (vxlan, dual-stack) and
# removes it at the end. Bounded: every wait has a deadline.
set -Eeuo pipefail
E2E=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck disable=SC1091
. "$E2E/lib.sh"
STATE=${WEFT_CLUSTER_DIR:-/var/tmp/weft-cluster}
cycles=2000 batch=20
while (($#)); do
  case $1 in
    --cycles) cycles=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    *) echo "usage: $0 [--cycles N] [--batch B]" >&2; exit 2 ;;
  esac
done
((cycles >= batch && batch > 0)) || fail "--cycles must be at least --batch"
own=0
if [[ ! -s $STATE/prefix ]]; then
  own=1
  trap '"$E2E/cluster" down >/dev/null 2>&1 || true' EXIT
  timeout 600 "$E2E/cluster" up --nodes 2 --backend vxlan >/dev/null
fi
prefix=$(cat "$STATE/prefix")
started=$SECONDS

# PID of the weft-agent running in a node's network namespace.
agent_pid() { # node
  local want p
  want=$([[ $1 == control-plane ]] && echo "$prefix-cp" || echo "$prefix-$1")
  for p in $(pgrep -x weft-agent); do
    [[ $(ip netns identify "$p" 2>/dev/null) == "$want" ]] && { echo "$p"; return 0; }
  done
  return 1
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }
# Growth is what a leak looks like; a smaller figure at the end means the
# baseline caught something transient (an nft process's pipes, a CRI call).
at_most_10pct_above() { # value baseline
  awk -v v="$1" -v b="$2" 'BEGIN {exit !(v <= b * 1.1)}'
}
# The smallest of five samples a second apart: the agent's settled figure,
# not one caught in the middle of a pass.
settled() { # command pid
  local i v min=
  for i in 1 2 3 4 5; do
    v=$("$1" "$2")
    [[ -z $min || $v -lt $min ]] && min=$v
    ((i < 5)) && sleep 1
  done
  echo "$min"
}

all_pod_ips() {
  K get pods -A -o go-template='{{range .items}}{{if not .spec.hostNetwork}}{{range .status.podIPs}}{{.ip}}{{"\n"}}{{end}}{{end}}{{end}}'
}
no_duplicate_ips() {
  local dup
  dup=$(all_pod_ips | sort | uniq -d)
  [[ -z $dup ]] || fail "addresses held by two pods at once: $dup"
}

soak_pods() { # first count
  local i node
  for ((i = $1; i < $1 + $2; i++)); do
    node=node$((i % 2 + 1))
    printf -- '---\napiVersion: v1\nkind: Pod\nmetadata: {name: soak-%d, labels: {app: soak}}\n' "$i"
    printf 'spec: {nodeName: %s, terminationGracePeriodSeconds: 0, containers: [{name: echo, image: %s, imagePullPolicy: IfNotPresent}]}\n' \
      "$node" "$ECHO_IMAGE"
  done
}

restart_agent() { # node
  local pod
  pod=$(K -n kube-system get pods -l app.kubernetes.io/name=weft --field-selector "spec.nodeName=$1" -o name)
  K -n kube-system delete "$pod" --wait=true >/dev/null
  K -n kube-system rollout status daemonset/weft --timeout 90s >/dev/null
}

K delete pods -l app=soak --wait=true >/dev/null
declare -A base_rss base_fds
# Baseline after one warm-up batch.
done_cycles=0 next=0
run_batch() {
  soak_pods "$next" "$batch" | K apply -f - >/dev/null
  next=$((next + batch))
  eventually 180 all_running soak "$batch" || { K get pods -l app=soak -o wide | tail -5; fail "soak pods not Running (at cycle $done_cycles)"; }
  no_duplicate_ips
  K delete pods -l app=soak --wait=false >/dev/null
  eventually 120 bash -c "[[ -z \$('$E2E/cluster' kubectl get pods -l app=soak --no-headers 2>/dev/null) ]]" ||
    fail "soak pods were not deleted (at cycle $done_cycles)"
  done_cycles=$((done_cycles + batch))
}
run_batch
for n in control-plane node1; do
  pid=$(agent_pid "$n") || fail "no weft-agent on $n"
  base_rss[$n]=$(settled rss_kib "$pid") base_fds[$n]=$(settled fds "$pid")
done
events=("$((cycles / 3))" "$((cycles / 2))" "$((2 * cycles / 3))")
while ((done_cycles < cycles)); do
  run_batch
  if ((${#events[@]} && done_cycles >= events[0])); then
    case ${#events[@]} in
      3 | 1) restart_agent node2; echo "soak: cycle $done_cycles: node2's agent restarted" ;;
      2) "$E2E/cluster" reboot node2 >/dev/null; echo "soak: cycle $done_cycles: node2 rebooted" ;;
    esac
    events=("${events[@]:1}")
  fi
done

for n in node1 node2; do
  eventually 60 no_leak_on "$n" || fail "$n leaked: reserved $(reservations "$n" | tr '\n' ' ') vs pods $(pod_ips_on "$n" | tr '\n' ' ')"
done
report=""
for n in control-plane node1; do
  pid=$(agent_pid "$n") || fail "no weft-agent on $n at the end"
  rss=$(settled rss_kib "$pid") nfd=$(settled fds "$pid")
  at_most_10pct_above "$rss" "${base_rss[$n]}" || fail "$n's agent RSS grew from ${base_rss[$n]} KiB to $rss KiB"
  at_most_10pct_above "$nfd" "${base_fds[$n]}" || fail "$n's agent open fds grew from ${base_fds[$n]} to $nfd"
  report+=" $n: RSS ${base_rss[$n]}->$rss KiB, fds ${base_fds[$n]}->$nfd;"
done
pass "soak: $done_cycles pod create/delete cycles in $((SECONDS - started)) s with 2 agent restarts and a node reboot; no address doubled, none leaked;$report"
if ((own)); then "$E2E/cluster" down >/dev/null; trap - EXIT; fi
