#!/usr/bin/env bash
# Every path a pod uses, over IPv4 and (with FAMILY=dual) IPv6: pod to pod on
# the same node and across nodes (ICMP, TCP, UDP, and a DF-marked datagram as
# large as the pod MTU allows, which crosses, or, to a peer behind VXLAN with
# `auto`, draws a path-MTU error and crosses at that size), node to pod and
# pod to node, a host-network
# pod to a pod on another node, a ClusterIP Service with endpoints on other
# nodes, a NodePort from another node, the client pod's own address as seen
# by pods, and, when EXTERNAL_V4 is set, egress masqueraded to the node's
# address. Shared by the local cluster and kind (KUBECTL, ECHO_IMAGE).
set -Eeuo pipefail
E2E=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck disable=SC1091
. "$E2E/lib.sh"
FAMILY=${FAMILY:-dual}
case $FAMILY in
  dual) families=(4 6) ;;
  ipv4) families=(4) ;;
  ipv6) families=(6) ;;
  *) fail "FAMILY must be dual, ipv4 or ipv6" ;;
esac
checks=0

check() { # description cmd…
  local what=$1; shift
  eventually 20 "$@" || fail "$what"
  checks=$((checks + 1))
}

answer_from() { # pod host port proto [size] -> prints "<hostname> <client>"
  K exec "$1" -- /weft-echo client "$2" "$3" "$4" ${5:+"$5"}
}
answers() { # expected-prefix pod host port proto [size]
  local want=$1; shift
  [[ $(answer_from "$@") == "$want"* ]]
}
saw() { # expected-client pod host port proto
  local want=$1; shift
  [[ $(answer_from "$@" | awk '{print $2}') == "$want" ]]
}

no_pods() { [[ -z $(K get pods -l "app in (conn,conn-host)" --no-headers 2>/dev/null) ]]; }
K delete deployment conn --ignore-not-found >/dev/null
K delete daemonset conn-host --ignore-not-found >/dev/null
eventually 60 no_pods || fail "pods of an earlier run do not go away"
nodes=$(K get nodes --no-headers | wc -l)
workers=$(worker_count)
deploy_echo conn $((workers * 2))
K apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: conn-host}
spec:
  selector: {matchLabels: {app: conn-host}}
  template:
    metadata: {labels: {app: conn-host}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      tolerations: [{operator: Exists}]
      containers:
      - {name: echo, image: $ECHO_IMAGE, imagePullPolicy: IfNotPresent, args: ["18080"]}
---
apiVersion: v1
kind: Service
metadata: {name: conn}
spec:
  type: NodePort
  ipFamilyPolicy: PreferDualStack
  selector: {app: conn}
  ports: [{port: 80, targetPort: 8080, protocol: TCP, name: tcp}]
YAML
eventually 120 all_running conn $((workers * 2)) || { K get pods -o wide; fail "conn pods not Running"; }
eventually 60 all_running conn-host "$nodes" || { K get pods -o wide; fail "conn-host pods not Running"; }

mapfile -t pods < <(pod_table conn)
mapfile -t hosts < <(pod_table conn-host)
read -r a node_a a4 a6 <<<"${pods[0]}"
same=$(printf '%s\n' "${pods[@]:1}" | awk -v n="$node_a" '$2 == n {print; exit}')
other=$(printf '%s\n' "${pods[@]}" | awk -v n="$node_a" '$2 != n {print; exit}')
[[ -n $other ]] || fail "no pod on a second node"
host_a=$(printf '%s\n' "${hosts[@]}" | awk -v n="$node_a" '$2 == n {print $1; exit}')
read -r host_b node_b nb4 nb6 <<<"$(printf '%s\n' "${hosts[@]}" | awk -v n="$node_a" '$2 != n {print; exit}')"
mtu=$(K exec "$a" -- cat /sys/class/net/eth0/mtu)
remote_pods=" $(printf '%s\n' "${pods[@]}" | awk -v n="$node_a" '$2 != n {printf "%s ", $1}')"

# kube-proxy spreads connections over the endpoints: ask until one on
# another node has answered.
svc_reaches_other() { # service-ip
  local who _
  for _ in $(seq 20); do
    who=$(answer_from "$a" "$1" 80 tcp | awk '{print $1}')
    [[ $remote_pods == *" $who "* ]] && return 0
  done
  return 1
}

for f in "${families[@]}"; do
  # pod_table's columns 3 and 4 are podIPs[0] and [1]; single-stack pods have only [0].
  if [[ $f == 4 || $FAMILY == ipv6 ]]; then col=3; else col=4; fi
  src=$([[ $col == 3 ]] && echo "$a4" || echo "$a6")
  nodeb=$([[ $col == 3 ]] && echo "$nb4" || echo "$nb6")
  for peer in "$same" "$other"; do
    [[ -n $peer ]] || continue
    read -r pname pnode _ _ <<<"$peer"
    ip=$(awk -v c="$col" '{print $c}' <<<"$peer")
    where=$([[ $pnode == "$node_a" ]] && echo "same node" || echo "across nodes")
    check "IPv$f ICMP $a -> $pname ($where)" reach "$a" "$ip"
    check "IPv$f TCP $a -> $pname ($where)" answers "$pname " "$a" "$ip" 8080 tcp
    check "IPv$f UDP $a -> $pname ($where)" answers "$pname " "$a" "$ip" 8080 udp
    check "IPv$f pod-to-pod keeps the source address ($where)" saw "$src" "$a" "$ip" 8080 tcp
  done
  read -r oname _ _ _ <<<"$other"
  oip=$(awk -v c="$col" '{print $c}' <<<"$other")
  payload=$((mtu - (f == 4 ? 28 : 48)))
  check "IPv$f a ${payload}-byte DF datagram crosses nodes, at the path MTU if smaller (pod MTU $mtu)" answers "$oname " "$a" "$oip" 8080 udp-df "$payload"
  check "IPv$f node -> pod on another node (host-network pod $host_a)" answers "$oname " "$host_a" "$oip" 8080 tcp
  check "IPv$f pod -> node $node_b (the node sees the pod's address)" saw "$src" "$a" "$nodeb" 18080 tcp
  check "IPv$f host-network pod on $node_b -> pod $a" answers "$a " "$host_b" "$(awk -v c="$col" '{print $c}' <<<"${pods[0]}")" 8080 tcp
  svc=$(K get service conn -o "jsonpath={.spec.clusterIPs[$((col - 3))]}")
  [[ -n $svc ]] || fail "no IPv$f ClusterIP"
  check "IPv$f ClusterIP Service $svc reaches an endpoint on another node" svc_reaches_other "$svc"
  nodeport=$(K get service conn -o jsonpath='{.spec.ports[0].nodePort}')
  check "IPv$f NodePort $nodeport on $node_b from $node_a" answers "conn-" "$host_a" "$nodeb" "$nodeport" tcp
  if [[ -n ${EXTERNAL_V4:-} ]]; then
    ext=$([[ $f == 4 ]] && echo "$EXTERNAL_V4" || echo "${EXTERNAL_V6:-}")
    node_ip=$(K get node "$node_a" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}' | tr ' ' '\n' | grep -F "$([[ $f == 4 ]] && echo . || echo :)" | head -1)
    check "IPv$f egress to $ext is masqueraded to $node_a's address $node_ip" saw "$node_ip" "$a" "$ext" 8080 tcp
  fi
done
K delete daemonset conn-host --wait=false >/dev/null
K delete deployment conn --wait=false >/dev/null
K delete service conn --wait=false >/dev/null
pass "connectivity: $checks checks ($FAMILY) passed"
