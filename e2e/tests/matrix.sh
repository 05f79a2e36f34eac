#!/usr/bin/env bash
# The e2e matrix on the local cluster, weft installed with `helm install
# charts/weft`: the full connectivity check (e2e/tests/connectivity.sh) for
# vxlan and routes on one segment and auto across two segments, over IPv4
# and IPv6, plus the faults a user would notice:
#   - the agent pod is deleted and restarted: an established cross-node TCP
#     connection keeps flowing;
#   - a node is deleted from the API: peers drop its routes within seconds;
#   - `helm upgrade` from vxlan to routes converges with no VXLAN state left;
#   - `helm uninstall` plus `weft-agent cleanup` leave no weft state behind.
# Bounded; tears the cluster down on exit.
set -Eeuo pipefail
E2E=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$(dirname "$E2E")
# shellcheck disable=SC1091
. "$E2E/lib.sh"
export EXTERNAL_V4=203.0.113.200 EXTERNAL_V6=2001:db8:e::200
trap '"$E2E/cluster" down >/dev/null 2>&1 || true' EXIT
started=$SECONDS
on() { "$E2E/cluster" exec "$@"; }

agent_restart_keeps_tcp() {
  deploy_echo tcp 2
  eventually 90 all_running tcp 2 || fail "tcp pods not Running"
  mapfile -t p < <(pod_table tcp)
  read -r a node_a _ _ <<<"${p[0]}"
  read -r _ node_b b4 _ <<<"${p[1]}"
  [[ $node_a != "$node_b" ]] || fail "tcp pods share a node"
  # One TCP connection, a line every 0.25 s for 15 s; the echo server sends each back.
  K exec "$a" -- sh -c "(i=0; while [ \$i -lt 60 ]; do echo l\$i; i=\$((i+1)); sleep 0.25; done) | nc $b4 8080 >/tmp/stream 2>&1 &"
  sleep 2
  agent=$(K -n kube-system get pods -l app.kubernetes.io/name=weft --field-selector "spec.nodeName=$node_a" -o name)
  K -n kube-system delete "$agent" --wait=true >/dev/null
  K -n kube-system rollout status daemonset/weft --timeout 60s >/dev/null
  sleep 15
  lines=$(K exec "$a" -- sh -c 'wc -l </tmp/stream')
  [[ $lines == 60 ]] || fail "the TCP connection across nodes broke while the agent restarted ($lines of 60 lines echoed)"
  K delete deployment tcp --wait=false >/dev/null
  pass "agent pod restarted: an established cross-node TCP connection kept flowing (60/60 lines)"
}

deleted_node_routes_vanish() {
  K apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: ghost
  annotations: {weft.dev/public-ip: 198.51.100.99, weft.dev/vtep-mac: "0e:00:00:00:00:99", weft.dev/backend: vxlan}
spec: {podCIDR: 10.244.99.0/24, podCIDRs: [10.244.99.0/24]}
YAML
  eventually 10 bash -c "'$E2E/cluster' exec node1 -- ip route show proto 88 | grep -q 10.244.99.0/24" || fail "no route to a new node's podCIDR"
  K delete node ghost >/dev/null
  local t0=$SECONDS
  eventually 5 bash -c "! '$E2E/cluster' exec node1 -- ip route show proto 88 | grep -q 10.244.99.0/24" ||
    fail "node1 kept its route to a deleted node"
  pass "a node deleted from the API: node1 dropped its route within $((SECONDS - t0 + 1)) s"
}

upgrade_to_routes() {
  "$E2E/cluster" helm upgrade weft "$ROOT/charts/weft" -n kube-system --reuse-values --set config.backend=routes --wait --timeout 120s >/dev/null
  K -n kube-system rollout status daemonset/weft --timeout 120s >/dev/null
  for n in $(K get nodes -o name | sed 's|node/||'); do
    eventually 30 bash -c "! '$E2E/cluster' exec $n -- ip link show weft.vxlan" || fail "$n kept weft.vxlan after the upgrade to routes"
    on "$n" -- ip route show proto 88 | grep -q "weft.vxlan" && fail "$n kept VXLAN routes"
  done
  pass "helm upgrade vxlan -> routes converged: no VXLAN device or route left"
}

uninstall_and_cleanup() {
  K delete deployment --all --wait=true >/dev/null
  eventually 60 bash -c "! '$E2E/cluster' kubectl get pods --no-headers 2>/dev/null | grep -q ." || fail "pods linger"
  "$E2E/cluster" helm uninstall weft -n kube-system --wait >/dev/null
  local bin
  bin=$("$ROOT/scripts/build-static")
  for n in $(K get nodes -o name | sed 's|node/||'); do
    on "$n" -- "$bin/weft-agent" cleanup --cluster-cidrs 10.244.0.0/16 >/dev/null 2>&1 || fail "weft-agent cleanup failed on $n"
    on "$n" -- ip link show weft.vxlan >/dev/null 2>&1 && fail "$n: weft.vxlan left"
    [[ -z $(on "$n" -- ip route show proto 88) && -z $(on "$n" -- ip -6 route show proto 88) ]] || fail "$n: peer routes left"
    [[ -z $(on "$n" -- ip route show proto 87) ]] || fail "$n: pod routes left"
    on "$n" -- nft list table inet weft >/dev/null 2>&1 && fail "$n: nftables table inet weft left"
    on "$n" -- test -e /etc/cni/net.d/10-weft.conflist && fail "$n: conflist left"
    on "$n" -- test -e /opt/cni/bin/weft && fail "$n: /opt/cni/bin/weft left"
    on "$n" -- ip -o link | grep -q ' weft' && fail "$n: weft interfaces left"
  done
  pass "helm uninstall + weft-agent cleanup left no weft state on any node"
}

for cfg in "vxlan 1" "routes 1" "auto 2"; do
  read -r backend segments <<<"$cfg"
  echo "=== backend $backend, $segments segment(s), dual-stack"
  "$E2E/cluster" down >/dev/null 2>&1 || true
  timeout 600 "$E2E/cluster" up --nodes 2 --segments "$segments" --backend "$backend" >/dev/null
  if [[ $backend == auto ]]; then
    on node1 -- ip route show proto 88 | grep -q "weft.vxlan" || fail "auto across segments must use VXLAN to node2"
  fi
  "$E2E/tests/connectivity.sh"
  if [[ $backend == vxlan ]]; then
    agent_restart_keeps_tcp
    deleted_node_routes_vanish
    upgrade_to_routes
    "$E2E/tests/connectivity.sh"
    uninstall_and_cleanup
  fi
done
"$E2E/cluster" down >/dev/null
trap - EXIT
echo "e2e matrix: all passed in $((SECONDS - started)) s"
