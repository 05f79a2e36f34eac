#!/usr/bin/env bash
# The e2e matrix on the local cluster, weft installed with `helm install
# charts/weft`: the full connectivity check (e2e/tests/connectivity.sh) for
# vxlan and routes on one segment and auto across two segments, dual-stack,
# plus auto IPv6-only and routes IPv4-only clusters, and the faults a user
# would notice:
#   - the agent pod is deleted and restarted: an established cross-node TCP
#     connection keeps flowing;
#   - a node is deleted from the API: peers drop its routes within seconds;
#   - the API server is down for 60 s, then again with etcd compacted so
#     the watches relist (410 Gone): traffic keeps flowing, no route
#     changes, the agents write nothing to the kernel afterwards, and the
#     watches resume;
#   - weft is killed with SIGKILL in the middle of ADD: kubelet retries, the
#     pod comes up, nothing leaks, no address is doubled; a planted leak is
#     reclaimed by weft-agent's IPAM GC;
#   - a node reboots (namespaces and /run destroyed, then rebuilt): its pods
#     come back with addresses, none doubled, none leaked;
#   - `helm upgrade` from vxlan to routes converges with no VXLAN state left;
#   - `helm uninstall` plus `weft-agent cleanup` leave no weft state behind.
# With --upstream, the upstream Kubernetes e2e tests (e2e/upstream/run), the
# ClusterNetworkPolicy conformance suite (e2e/tests/cnp-conformance.sh) and
# the cyclonus subset (e2e/tests/cyclonus.sh --subset) run on the "auto,
# 2 segments, dual" cluster too, instead of on one of their own.
# Bounded; tears the cluster down on exit.
set -Eeuo pipefail
E2E=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$(dirname "$E2E")
# shellcheck disable=SC1091
. "$E2E/lib.sh"
export EXTERNAL_V4=203.0.113.200 EXTERNAL_V6=2001:db8:e::200
cnp_pid=
trap '[[ -z $cnp_pid ]] || kill "$cnp_pid" 2>/dev/null; "$E2E/cluster" down >/dev/null 2>&1 || true' EXIT
started=$SECONDS
upstream=0
case ${1:-} in
  --upstream) upstream=1 ;;
  "") ;;
  *) echo "usage: $0 [--upstream]" >&2; exit 2 ;;
esac
on() { "$E2E/cluster" exec "$@"; }

agent_restart_keeps_tcp() {
  deploy_echo tcp 2
  eventually 90 all_running tcp 2 || fail "tcp pods not Running"
  mapfile -t p < <(pod_table tcp)
  read -r a node_a _ _ <<<"${p[0]}"
  read -r _ node_b b4 _ <<<"${p[1]}"
  [[ $node_a != "$node_b" ]] || fail "tcp pods share a node"
  # One TCP connection, a line every 0.25 s for 15 s; the echo server sends each back.
  # Wholly redirected and backgrounded, so that kubectl exec returns at once.
  K exec "$a" -- sh -c "{ (i=0; while [ \$i -lt 60 ]; do echo l\$i; i=\$((i+1)); sleep 0.25; done) | nc $b4 8080; } >/tmp/stream 2>&1 </dev/null &"
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

# A Node with no kubelet that weft believes: its public IP is among its
# status addresses and its VTEP MAC is the one derived from its name
# (FNV-1a of the name, as weft-agent's vtep_mac_for).
add_ghost_node() {
  local mac
  mac=$(python3 -c 'import sys
h = 0xcbf29ce484222325
for b in b"ghost": h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
print(":".join(["0e"] + ["%02x" % x for x in h.to_bytes(8, "big")[:5]]))')
  K apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: ghost
  annotations: {weft.dev/public-ip: 198.51.100.99, weft.dev/vtep-mac: "$mac", weft.dev/backend: vxlan}
spec: {podCIDR: 10.244.99.0/24, podCIDRs: [10.244.99.0/24]}
YAML
  K patch node ghost --subresource=status --type=merge \
    -p '{"status":{"addresses":[{"type":"InternalIP","address":"198.51.100.99"}]}}' >/dev/null
}

deleted_node_routes_vanish() {
  add_ghost_node
  eventually 10 bash -c "'$E2E/cluster' exec node1 -- ip route show proto 88 | grep -q 10.244.99.0/24" || fail "no route to a new node's podCIDR"
  K delete node ghost >/dev/null
  local t0=$SECONDS
  eventually 5 bash -c "! '$E2E/cluster' exec node1 -- ip route show proto 88 | grep -q 10.244.99.0/24" ||
    fail "node1 kept its route to a deleted node"
  pass "a node deleted from the API: node1 dropped its route within $((SECONDS - t0 + 1)) s"
}

STATE=${WEFT_CLUSTER_DIR:-/var/tmp/weft-cluster}

# A plugin killed with SIGKILL in the middle of ADD: kubelet retries with a
# new sandbox, the pod comes up, and weft-agent's GC reclaims what the killed
# ADD had reserved (the cluster runs GC every 10 s with a 20 s grace).
sigkill_mid_add() {
  local n=node1 bin=$STATE/nodes/node1/opt/cni/bin
  mv "$bin/weft" "$bin/weft.real"
  cat >"$bin/weft" <<'SH'
#!/bin/sh
# The first ADD after the test starts is killed 3 ms in, mid-way through wiring.
if [ "$CNI_COMMAND" = ADD ] && [ ! -e /run/weft/killed-once ]; then
  echo "$CNI_CONTAINERID" >/run/weft/killed-once
  /opt/cni/bin/weft.real 0<&0 &
  pid=$!; sleep 0.003; kill -9 "$pid"
  echo '{"cniVersion":"1.0.0","code":11,"msg":"killed by the test"}'; exit 1
fi
exec /opt/cni/bin/weft.real
SH
  chmod +x "$bin/weft"
  K apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: killed, labels: {app: killed}}
spec:
  nodeName: $n
  terminationGracePeriodSeconds: 1
  containers: [{name: echo, image: $ECHO_IMAGE, imagePullPolicy: IfNotPresent}]
YAML
  eventually 90 all_running killed 1 || { K describe pod killed | tail -15; fail "pod did not come up after its ADD was killed"; }
  [[ -e $STATE/nodes/$n/run/weft/killed-once ]] || fail "the test wrapper never ran"
  mv "$bin/weft.real" "$bin/weft"
  rm -f "$STATE/nodes/$n/run/weft/killed-once"
  eventually 60 no_leak_on "$n" || fail "addresses leaked by the killed ADD were not reclaimed: reserved $(reservations "$n" | tr '\n' ' ') vs pods $(pod_ips_on "$n" | tr '\n' ' ')"
  local ips
  ips=$(pod_ips_on "$n")
  [[ $(sort <<<"$ips" | uniq -d) == "" ]] || fail "an address is held by two pods: $ips"
  K delete pod killed --wait=false >/dev/null
  pass "SIGKILL in the middle of ADD: kubelet retried, the pod came up, GC reclaimed the rest, no duplicate"
}

# A leak planted by hand (a container the runtime never had) is reclaimed.
gc_reclaims_a_planted_leak() {
  local n=node1 dir=$STATE/nodes/node1/run/weft/ipam/weft cidr ip
  cidr=$(K get node $n -o jsonpath='{.spec.podCIDRs[0]}')
  ip=${cidr%.0/24}.250
  printf 'leakedcontainer\neth0\n' >"$dir/$ip"
  printf '%s\n' "$ip" >"$dir/attach-leakedcontainer@eth0"
  touch -d '10 minutes ago' "$dir/$ip" "$dir/attach-leakedcontainer@eth0"
  eventually 40 bash -c "[[ ! -e '$dir/$ip' && ! -e '$dir/attach-leakedcontainer@eth0' ]]" || fail "GC did not reclaim a leaked $ip"
  on $n -- busybox wget -qO- http://127.0.0.1:9959/metrics | grep -Eq '^weft_ipam_gc_freed_total [1-9]' || fail "weft_ipam_gc_freed_total did not count it"
  pass "weft-agent's IPAM GC reclaimed a leaked address and counted it"
}

# A node reboots (e2e/cluster reboot: every process killed, its namespaces
# and /run destroyed, then booted again): its pods come back with addresses
# from its podCIDR, reachable across nodes, no address is held twice in the
# cluster, and its IPAM store holds exactly its pods' addresses.
settled_after_reboot() { all_running boot 4 && [[ -n $(reservations "$1") ]] && no_leak_on "$1"; }

node_reboot_recovers() {
  local n=node2 peer rows row name node ip ips dup
  deploy_echo boot 4
  eventually 90 all_running boot 4 || fail "boot pods not Running"
  "$E2E/cluster" reboot $n >/dev/null
  # The store was wiped with /run: reservations equal to the pods' reported
  # addresses prove every pod on the node got a fresh ADD after the reboot.
  eventually 180 settled_after_reboot $n || {
    node_report $n
    fail "after the reboot of $n: reserved $(reservations $n | tr '\n' ' ') vs pods $(pod_ips_on $n | tr '\n' ' ')"
  }
  dup=$(K get pods -A -o go-template='{{range .items}}{{if not .spec.hostNetwork}}{{range .status.podIPs}}{{.ip}}{{"\n"}}{{end}}{{end}}{{end}}' | sort | uniq -d)
  [[ -z $dup ]] || fail "addresses held by two pods after the reboot: $dup"
  mapfile -t rows < <(pod_table boot)
  peer=$(awk -v n="$n" '$2 != n {print $1; exit}' <<<"$(printf '%s\n' "${rows[@]}")")
  [[ -n $peer ]] || fail "no boot pod outside $n"
  for row in "${rows[@]}"; do
    read -r name node ips <<<"$row"
    [[ $node == "$n" ]] || continue
    read -ra ips <<<"$ips"
    for ip in "${ips[@]}"; do
      eventually 30 reach "$peer" "$ip" || fail "$peer cannot reach $name ($ip) on $n after its reboot"
    done
  done
  K delete deployment boot --wait=false >/dev/null
  pass "$n rebooted: its pods came back with fresh addresses, reachable across nodes, none doubled, none leaked"
}

# A counter of the agent on a node, summed over its labels.
agent_counter() { # node metric
  on "$1" -- busybox wget -qO- http://127.0.0.1:9959/metrics | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}
peer_routes_of() { on "$1" -- ip route show proto 88; on "$1" -- ip -6 route show proto 88; }

# A Node appears and goes again: every node routes it, then drops it.
# Bounded at 120 s: after an outage each agent's watch reconnects on its
# own backoff (up to 30 s), behind kube-proxy's own reconnect (the agents
# reach the API server through the kubernetes Service).
ghost_comes_and_goes() {
  local n
  add_ghost_node
  for n in "$@"; do
    eventually 120 bash -c "'$E2E/cluster' exec $n -- ip route show proto 88 | grep -q 10.244.99.0/24" || fail "$n never routed a new Node"
  done
  K delete node ghost >/dev/null
  for n in "$@"; do
    eventually 30 bash -c "! '$E2E/cluster' exec $n -- ip route show proto 88 | grep -q 10.244.99.0/24" || fail "$n kept a deleted Node's route"
  done
}

# The API server stops for 60 s (and, with "compact", etcd is compacted
# meanwhile, so every watch that resumes gets 410 Gone and relists): an
# established cross-node TCP stream keeps flowing, no node's routes change
# during the outage, and afterwards the watches resume and the relist
# writes nothing to the kernel: once a Node created after the outage has
# come and gone, each agent's kernel writes grew by exactly what the same
# Node cost before the outage.
api_outage_changes_nothing() { # plain|compact
  local mode=$1 app=outage-$1 n a node_a b4 nodes
  local -A w0 w1 routes
  nodes=$(K get nodes -o name | sed 's|node/||')
  deploy_echo "$app" 2
  eventually 90 all_running "$app" 2 || fail "$app pods not Running"
  mapfile -t p < <(pod_table "$app")
  read -r a node_a _ _ <<<"${p[0]}"
  read -r _ node_b b4 _ <<<"${p[1]}"
  [[ $node_a != "$node_b" ]] || fail "outage pods share a node"
  for n in $nodes; do w0[$n]=$(agent_counter "$n" weft_kernel_writes_total); done
  # shellcheck disable=SC2086  # a list of nodes
  ghost_comes_and_goes $nodes
  for n in $nodes; do w1[$n]=$(agent_counter "$n" weft_kernel_writes_total); routes[$n]=$(peer_routes_of "$n"); done
  # One TCP connection, a line every 0.5 s for 100 s; the echo server sends each back.
  K exec "$a" -- sh -c "{ (i=0; while [ \$i -lt 200 ]; do echo l\$i; i=\$((i+1)); sleep 0.5; done) | nc $b4 8080; } >/tmp/stream 2>&1 </dev/null &"
  sleep 3
  "$E2E/cluster" apiserver stop
  [[ $mode == compact ]] && "$E2E/cluster" etcd-compact >/dev/null
  sleep 60
  for n in $nodes; do
    [[ $(peer_routes_of "$n") == "${routes[$n]}" ]] || fail "$n's routes changed while the API server was down"
  done
  "$E2E/cluster" apiserver start
  # shellcheck disable=SC2086
  ghost_comes_and_goes $nodes
  for n in $nodes; do
    [[ $(peer_routes_of "$n") == "${routes[$n]}" ]] || fail "$n's routes differ after the API server came back ($mode)"
    local cost=$((w1[$n] - w0[$n])) now
    now=$(agent_counter "$n" weft_kernel_writes_total)
    # At most: the first window may also hold an unrelated write (a pod's
    # policy update, a drift pass), never the relist's.
    ((now - w1[$n] <= cost)) ||
      fail "$n's agent wrote $((now - w1[$n] - cost)) times to the kernel beyond a new Node's $cost after the API server came back ($mode)"
  done
  eventually 60 bash -c "[[ \$('$E2E/cluster' kubectl exec $a -- sh -c 'wc -l </tmp/stream') == 200 ]]" ||
    fail "the TCP stream across nodes broke during the API server outage ($(K exec "$a" -- sh -c 'wc -l </tmp/stream') of 200 lines echoed)"
  K delete deployment "$app" --wait=false >/dev/null
  pass "API server down 60 s ($mode): traffic flowed, no route changed, the watches resumed and the relist wrote nothing to the kernel"
}

upgrade_to_routes() {
  local n routes
  "$E2E/cluster" helm upgrade weft "$ROOT/charts/weft" -n kube-system --reuse-values --set config.backend=routes --wait --timeout 120s >/dev/null
  K -n kube-system rollout status daemonset/weft --timeout 120s >/dev/null
  for n in $(K get nodes -o name | sed 's|node/||'); do
    eventually 30 bash -c "! '$E2E/cluster' exec $n -- ip link show weft.vxlan" || fail "$n kept weft.vxlan after the upgrade to routes"
    routes="$(on "$n" -- ip route show proto 88)$(on "$n" -- ip -6 route show proto 88)"
    [[ $routes != *weft.vxlan* ]] || fail "$n kept VXLAN routes: $routes"
  done
  pass "helm upgrade vxlan -> routes converged: no VXLAN device or route left"
}

uninstall_and_cleanup() {
  K delete deployment --all --wait=true >/dev/null
  K -n kube-system scale deployment coredns --replicas 0 >/dev/null
  eventually 60 bash -c "! '$E2E/cluster' kubectl get pods --no-headers 2>/dev/null | grep -q ." || fail "pods linger"
  eventually 60 bash -c "! '$E2E/cluster' kubectl -n kube-system get pods -l k8s-app=kube-dns --no-headers 2>/dev/null | grep -q ." ||
    fail "CoreDNS pods linger"
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
    [[ $(on "$n" -- ip -o link) != *" weft"* ]] || fail "$n: weft interfaces left"
    diff -u "$STATE/nodes/$n/before-weft" <("$E2E/cluster" snapshot "$n") >&2 ||
      fail "$n after helm uninstall + weft-agent cleanup differs from before the install (diff above)"
  done
  pass "helm uninstall + weft-agent cleanup left every node as it was before the install"
}

# WEFT_MATRIX="backend segments family;…" runs a subset (while developing).
IFS=';' read -ra configs <<<"${WEFT_MATRIX:-vxlan 1 dual;routes 1 dual;auto 2 dual;auto 2 ipv6;routes 1 ipv4}"
for cfg in "${configs[@]}"; do
  read -r backend segments family <<<"$cfg"
  echo "=== backend $backend, $segments segment(s), $family"
  "$E2E/cluster" down >/dev/null 2>&1 || true
  timeout 600 "$E2E/cluster" up --nodes 2 --segments "$segments" --backend "$backend" --ip-family "$family" >/dev/null
  export FAMILY=$family
  if [[ $backend == auto ]]; then
    # Peer routes of the cluster's families (IPv6 only: ip -6); read whole,
    # since grep -q closing a pipe early fails it under pipefail.
    peer_routes="$(on node1 -- ip route show proto 88)$(on node1 -- ip -6 route show proto 88)"
    [[ $peer_routes == *weft.vxlan* ]] || fail "auto across segments must use VXLAN to node2: $peer_routes"
  fi
  "$E2E/tests/connectivity.sh"
  # The soak's short run (the full 2,000 cycles: e2e/tests/soak.sh alone).
  if [[ $backend == routes && $family == dual ]]; then "$E2E/tests/soak.sh" --cycles 100; fi
  if ((upstream)) && [[ $backend == auto && $segments == 2 && $family == dual ]]; then
    # The ClusterNetworkPolicy conformance suite runs beside the upstream
    # e2e run, in a process of its own: it mostly waits out denied probes,
    # and every subject of its policies is in its own namespaces (network-
    # policy-conformance-*), which no upstream test uses. The cyclonus
    # subset follows the upstream run, still beside the conformance suite
    # (which takes about 300 s longer): cyclonus's truth tables need only
    # that no cluster-wide policy selects its pods in x, y and z, and none
    # of the suite's does.
    cnp_log=$(mktemp)
    "$E2E/tests/cnp-conformance.sh" >"$cnp_log" 2>&1 &
    cnp_pid=$!
    upstream_rc=0
    "$E2E/upstream/run" || upstream_rc=$?
    cyclonus_rc=0
    "$E2E/tests/cyclonus.sh" --subset || cyclonus_rc=$?
    cnp_rc=0
    wait "$cnp_pid" || cnp_rc=$?
    cnp_pid=
    cat "$cnp_log"
    rm -f "$cnp_log"
    ((upstream_rc == 0)) || fail "the upstream e2e run failed (exit $upstream_rc)"
    ((cnp_rc == 0)) || fail "the ClusterNetworkPolicy conformance suite failed (exit $cnp_rc)"
    ((cyclonus_rc == 0)) || fail "the cyclonus subset failed (exit $cyclonus_rc)"
  fi
  if [[ $backend == vxlan ]]; then
    agent_restart_keeps_tcp
    deleted_node_routes_vanish
    api_outage_changes_nothing plain
    api_outage_changes_nothing compact
    gc_reclaims_a_planted_leak
    sigkill_mid_add
    node_reboot_recovers
    upgrade_to_routes
    "$E2E/tests/connectivity.sh"
    uninstall_and_cleanup
  fi
done
"$E2E/cluster" down >/dev/null
trap - EXIT
echo "e2e matrix: all passed in $((SECONDS - started)) s"
