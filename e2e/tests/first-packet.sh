#!/usr/bin/env bash
# NetworkPolicy holds from a pod's first packet. Pods created on node1 in a
# namespace with a deny-all-ingress policy are probed over HTTP, from a pod
# on node2 started before them, at the addresses weft's IPAM will hand out
# next (read from node1's round-robin cursor), so the probes start before
# the pods exist and before weft-agent learns their addresses from the API.
# No probe may ever get an answer. The control: the same probing of the
# same kind of pods in a namespace without policies gets answers, so a
# prober that cannot connect at all would fail the test.
#
# Runs against the local cluster that is up (e2e/tests/cluster.sh calls it).
# Bounded; removes what it created.
set -Eeuo pipefail
E2E=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck disable=SC1091
. "$E2E/lib.sh"
STATE=${WEFT_CLUSTER_DIR:-/var/tmp/weft-cluster}
PODS=4 # per namespace; the probes cover the next PODS+2 addresses
trap 'K delete namespace fp-closed fp-open --wait=false >/dev/null 2>&1 || true; K delete pod fp-prober --wait=false >/dev/null 2>&1 || true' EXIT

K apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: fp-closed}
---
apiVersion: v1
kind: Namespace
metadata: {name: fp-open}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all-ingress, namespace: fp-closed}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: v1
kind: Pod
metadata: {name: fp-prober}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  terminationGracePeriodSeconds: 1
  containers: [{name: prober, image: $ECHO_IMAGE, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}]
YAML
K wait --for=condition=Ready pod/fp-prober --timeout=90s >/dev/null || fail "fp-prober not Ready"

# The next addresses node1's IPAM hands out: after its IPv4 cursor (or the
# subnet's start, before its first pod), skipping the reserved ones.
next_addresses() {
  local cursor
  cursor=$(cat "$STATE"/nodes/node1/run/weft/ipam/weft/cursor-10.244.* 2>/dev/null || true)
  [[ -n $cursor ]] || cursor=$(K get node node1 -o jsonpath='{.spec.podCIDRs[0]}' | sed 's|\.0/24$|.0|')
  local taken
  mapfile -t taken < <(reservations node1)
  python3 - "$cursor" "$((PODS + 2))" "${taken[@]}" <<'EOF'
import ipaddress, sys
cur, n, taken = ipaddress.ip_address(sys.argv[1].strip()), int(sys.argv[2]), set(sys.argv[3:])
net = ipaddress.ip_network(f"{cur}/24", strict=False)
hosts = list(net.hosts())
start = next((i for i, h in enumerate(hosts) if h > cur), 0)
out = [str(h) for h in hosts[start:] + hosts[:start] if str(h) not in taken]
print(" ".join(out[:n]))
EOF
}

# Probes each address in its own loop for $1 seconds; prints "HIT <answer>"
# for every probe that got an HTTP answer (busybox nc: its wget crashes). A dropped SYN costs the 1 s
# timeout, a refused or unreachable one returns at once.
probe() { # seconds addresses…
  local secs=$1; shift
  # shellcheck disable=SC2016
  K exec fp-prober -- sh -c '
    end=$(($(date +%s) + $1)); shift
    for ip in "$@"; do
      (while [ "$(date +%s)" -lt "$end" ]; do
         a=$(printf "GET / HTTP/1.0\r\n\r\n" | nc -w 1 "$ip" 8080 2>/dev/null | tail -n1)
         case $a in "") ;; *) echo "HIT $ip $a" ;; esac
         sleep 0.05
       done) &
    done
    wait' probe "$secs" "$@"
}

pods_in() { # namespace
  local ns=$1 i
  for ((i = 0; i < PODS; i++)); do
    cat <<YAML
---
apiVersion: v1
kind: Pod
metadata: {name: p$i, namespace: $ns, labels: {app: fp}}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  terminationGracePeriodSeconds: 1
  containers: [{name: echo, image: $ECHO_IMAGE, imagePullPolicy: IfNotPresent, ports: [{containerPort: 8080}]}]
YAML
  done
}

# One round: start probing, create the pods, wait for them, probe on.
round() { # namespace -> the probes' hits
  local ns=$1 addrs out
  read -ra addrs <<<"$(next_addresses)"
  out=$(mktemp)
  probe 25 "${addrs[@]}" >"$out" 2>/dev/null &
  local prober=$!
  sleep 2
  pods_in "$ns" | K apply -f - >/dev/null
  K -n "$ns" wait --for=condition=Ready pod -l app=fp --timeout=60s >/dev/null || fail "$ns: pods not Ready"
  wait "$prober" || true
  local got
  got=$(K -n "$ns" get pods -o jsonpath='{.items[*].status.podIP}')
  for ip in $got; do [[ " ${addrs[*]} " == *" $ip "* ]] || fail "$ns: pod address $ip was not among the probed ones (${addrs[*]})"; done
  cat "$out"; rm -f "$out"
}

hits=$(round fp-closed)
[[ -z $hits ]] || fail "a pod under a deny-all-ingress policy answered a probe in its first seconds: $hits"
hits=$(round fp-open)
[[ $hits == *HIT* ]] || fail "the control failed: probes of pods without a policy never got an answer"
pass "pods under a deny-all-ingress policy never answered, from before their creation on (${PODS} pods probed at their next addresses); the same pods without a policy answered"
