#!/usr/bin/env bash
# The local cluster works as a Kubernetes cluster with weft as its CNI:
# nodes Ready with both pod CIDRs, pods of a spread Deployment get addresses
# from their node's CIDRs and reach each other (same node and across nodes,
# both families), egress is masqueraded, DEL empties weft's IPAM store,
# a pod under a deny-all-ingress policy never answers, even in its first
# second (e2e/tests/first-packet.sh), restarting containerd and kubelet
# keeps pods networked, and `down` leaves
# no namespace, process, mount or cgroup behind. Bounded; tears down on exit.
set -Eeuo pipefail
E2E=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck disable=SC1091
. "$E2E/lib.sh"
STATE=${WEFT_CLUSTER_DIR:-/var/tmp/weft-cluster}

"$E2E/cluster" down >/dev/null 2>&1 || true
trap '"$E2E/cluster" down >/dev/null 2>&1 || true' EXIT
started=$SECONDS
timeout 600 "$E2E/cluster" up --nodes 2
pass "up in $((SECONDS - started)) s"
prefix=$(cat "$STATE/prefix")

for n in node1 node2; do
  cidrs=$(K get node "$n" -o jsonpath='{.spec.podCIDRs}')
  [[ $cidrs == *10.244.* && $cidrs == *fd00:10:244:* ]] || fail "$n has podCIDRs $cidrs"
  [[ $(K get node "$n" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]] || fail "$n not Ready"
done
pass "both nodes Ready with IPv4 and IPv6 podCIDRs"

# weft-agent runs under the chart's ClusterRole and admission policy (the
# annotations it published show the policy admits what the agent writes with
# the kubelet's pod-bound token), and that role cannot touch a Node's spec,
# labels or taints: only nodes/status may be patched, and the policy narrows
# that to the agent's own Node's weft.dev/ annotations
# (node-agent/tests/node_scope.rs checks the refusals).
sa=system:serviceaccount:kube-system:weft
for verb in list watch; do
  [[ $(K auth can-i "$verb" nodes --as "$sa") == yes ]] || fail "weft's service account cannot $verb nodes"
done
[[ $(K auth can-i patch nodes --subresource status --as "$sa") == yes ]] || fail "weft's service account cannot patch nodes/status"
for verb in get patch update delete create; do
  [[ $(K auth can-i "$verb" nodes --as "$sa" 2>/dev/null) == no ]] || fail "weft's service account may $verb nodes (spec, labels, taints)"
done
K get validatingadmissionpolicybinding weft-own-node-annotations >/dev/null || fail "the chart's admission policy binding is missing"
# NetworkPolicy (on by default): list and watch only, on what it reads.
for res in pods namespaces networkpolicies.networking.k8s.io; do
  for verb in list watch; do
    [[ $(K auth can-i "$verb" "$res" --all-namespaces --as "$sa") == yes ]] || fail "weft's service account cannot $verb $res"
  done
  for verb in create update patch delete; do
    [[ $(K auth can-i "$verb" "$res" --all-namespaces --as "$sa" 2>/dev/null) == no ]] || fail "weft's service account may $verb $res"
  done
done
published() { [[ -n $(K get node "$1" -o jsonpath='{.metadata.annotations.weft\.dev/vtep-mac}') ]]; }
for n in node1 node2; do
  eventually 30 published "$n" || fail "$n has no weft.dev/vtep-mac annotation (refused by the admission policy? see its agent's log)"
done
pass "weft-agent works under the chart's ClusterRole and admission policy: it published both Nodes' annotations, may patch nodes/status only (not a Node's spec, labels or taints) and only read nodes, pods, namespaces and networkpolicies"

deploy_echo echo 4
eventually 90 all_running echo 4 || { K get pods -o wide; K get events | tail -20; fail "pods not Running"; }
mapfile -t pods < <(pod_table echo)
for row in "${pods[@]}"; do
  read -r name node v4 v6 <<<"$row"
  cidr4=$(K get node "$node" -o jsonpath='{.spec.podCIDRs[0]}')
  cidr6=$(K get node "$node" -o jsonpath='{.spec.podCIDRs[1]}')
  [[ $v4 == "${cidr4%.0/24}".* ]] || fail "$name on $node has $v4, outside $cidr4"
  [[ $v6 == "${cidr6%::/64}"::* ]] || fail "$name on $node has $v6, outside $cidr6"
  addrs=$(K exec "$name" -- ip -o addr show dev eth0)
  [[ $addrs == *"$v4/32"* && $addrs == *"$v6/128"* ]] || fail "$name: addresses in its netns: $addrs"
done
pass "4 pods Running on both nodes, addresses from their node's podCIDRs (status and netns)"

read -r first node_a _ _ <<<"${pods[0]}"
for row in "${pods[@]:1}"; do
  read -r name node v4 v6 <<<"$row"
  where=$([[ $node == "$node_a" ]] && echo "same node" || echo "across nodes")
  reach "$first" "$v4" || fail "$first -> $name ($v4, $where)"
  reach "$first" "$v6" || fail "$first -> $name ($v6, $where)"
  seen=$(K exec "$first" -- /weft-echo client "$v4" 8080)
  [[ $seen == "$name "* ]] || fail "TCP to $name answered '$seen'"
done
pass "pods reach each other on the same node and across nodes, IPv4 and IPv6, ICMP and TCP"

first_v4=$(awk '{print $3}' <<<"${pods[0]}")
other=$(awk -v n="$node_a" '$2 != n {print $3; exit}' <<<"$(printf '%s\n' "${pods[@]}")")
seen=$(K exec "$first" -- /weft-echo client "$other" 8080 | awk '{print $2}')
[[ $seen == "$first_v4" ]] || fail "pod-to-pod across nodes was seen from $seen, not $first_v4"
node_ip=$(K get node "$node_a" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}' | awk '{print $1}')
seen=$(K exec "$first" -- /weft-echo client 203.0.113.200 8080 | awk '{print $2}')
[[ $seen == "$node_ip" ]] || fail "egress was seen from $seen, not the node address $node_ip"
pass "pod-to-pod keeps the pod address; egress leaves with the node address"

# Cluster DNS: a dual-stack Service's name (kube-dns's own) resolves to
# both its ClusterIPs, through either kube-dns address (the kubelets'
# clusterDNS).
dns_name=kube-dns.kube-system.svc.cluster.local
resolves_both() { # pod [server]
  local out
  out=$(K exec "$1" -- nslookup "$dns_name" ${2:+"$2"} 2>&1) || return 1
  [[ $out == *"Address: 10.96.0.10"* && $out == *"Address: fd00:10:96::a"* ]]
}
eventually 30 resolves_both "$first" || fail "$dns_name did not resolve to 10.96.0.10 and fd00:10:96::a: $(K exec "$first" -- nslookup "$dns_name" 2>&1)"
for server in 10.96.0.10 fd00:10:96::a; do
  resolves_both "$first" "$server" || fail "kube-dns at $server did not answer A and AAAA for $dns_name"
done
pass "cluster DNS: a dual-stack Service resolves to its IPv4 and IPv6 ClusterIPs, through kube-dns at 10.96.0.10 and fd00:10:96::a"

# Each node has its own hostname (its own UTS namespace), as on kind, and
# host-network pods report it.
for n in control-plane node1 node2; do
  [[ $("$E2E/cluster" exec "$n" -- hostname) == "$n" ]] || fail "$n's hostname is $("$E2E/cluster" exec "$n" -- hostname)"
done
K apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: hostnet, labels: {app: hostnet}}
spec:
  nodeName: node2
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers: [{name: echo, image: $ECHO_IMAGE, imagePullPolicy: IfNotPresent, args: ["18081"]}]
YAML
eventually 60 all_running hostnet 1 || fail "hostnet pod not Running"
[[ $(K exec hostnet -- hostname) == node2 ]] || fail "a host-network pod on node2 reports hostname $(K exec hostnet -- hostname)"
K delete pod hostnet --wait=false >/dev/null
pass "every node has its own hostname; a host-network pod on node2 reports node2"

# The control plane is a node (tainted, as in kind) with weft, so the API
# server reaches pods: its proxy to a pod and to a Service.
K expose deployment echo --name echo --port 80 --target-port 8080 >/dev/null
[[ $(K get --raw "/api/v1/namespaces/default/pods/$first:8080/proxy/") == "$first "* ]] ||
  fail "the API server's proxy to pod $first failed"
eventually 30 bash -c "[[ \$('$E2E/cluster' kubectl get --raw /api/v1/namespaces/default/services/echo:80/proxy/) == echo-* ]]" ||
  fail "the API server's proxy to the echo Service failed"
K delete service echo >/dev/null
pass "the API server reaches pods: its proxy to a pod and to a Service answer"

# NetworkPolicy holds from a new pod's first packet, through kubelet.
"$E2E/tests/first-packet.sh"

"$E2E/cluster" restart node1
read -r _ _ v4b _ <<<"${pods[1]}"
for row in "${pods[@]}"; do
  read -r name node v4 _ <<<"$row"
  [[ $node == node1 ]] && { eventually 30 reach "$name" "$v4b" || fail "$name lost its network after kubelet/containerd restart"; }
done
pass "restarting containerd and kubelet on node1 keeps its pods' networking"

K delete deployment echo --wait=true >/dev/null
eventually 60 bash -c "! $E2E/cluster kubectl get pods -l app=echo --no-headers 2>/dev/null | grep -q ." || fail "pods not deleted"
# What stays reserved is exactly the remaining pods' (CoreDNS) addresses.
# first-packet.sh's namespaces are deleted without waiting, and a pod
# keeps its podIPs in the API until the kubelet confirms it stopped, after
# its DEL; so the two views agree only once those pods are gone too.
for n in node1 node2; do
  eventually 60 no_leak_on "$n" || fail "$n: reserved $(reservations "$n" | tr '\n' ' ') but its pods hold $(pod_ips_on "$n" | tr '\n' ' ')"
done
pass "deleting the pods released their addresses (kubelet called DEL); the rest match the remaining pods"

# The pod start-up benchmark keeps working (small; its timings are not
# judged). Last: its pods' sandboxes may still be torn down after their
# objects are gone, which the leak check above must not see.
"$(dirname "$E2E")/bench/pod-startup.sh" --pods 4 --rounds 1 --out /dev/null
pass "bench/pod-startup.sh ran a round with weft and one with ptp + host-local"

trap - EXIT
"$E2E/cluster" down >/dev/null
leftover_ns=$(ip netns list | grep -c "^$prefix-" || true)
leftover_proc=$(pgrep -f "$STATE" | wc -l || true)
leftover_cg=$(find /sys/fs/cgroup -maxdepth 2 -name "$prefix-*" | wc -l)
leftover_mnt=$(grep -c "$STATE" /proc/mounts || true)
[[ $leftover_ns == 0 && $leftover_proc == 0 && $leftover_cg == 0 && $leftover_mnt == 0 && ! -e $STATE ]] ||
  fail "down left namespaces=$leftover_ns processes=$leftover_proc cgroups=$leftover_cg mounts=$leftover_mnt state=$(ls -d "$STATE" 2>/dev/null)"
pass "down left no namespace, process, cgroup, mount or state behind"
echo "cluster e2e: all passed in $((SECONDS - started)) s"
