#!/usr/bin/env bash
# Measures TCP throughput across a VXLAN link with transmit checksum offload
# on and off, on this kernel, to choose weft's default
# (config.vxlan.txChecksumOffload). Two "node" namespaces joined by a veth,
# each with a VXLAN device set up as weft-agent does (learning off, a
# permanent neighbour and FDB entry for the peer), and a bulk TCP transfer
# between addresses routed over it. Not a pass/fail test.
#   bench/vxlan-offload.sh [SECONDS per run, default 5] [ROUNDS, default 3]
set -euo pipefail
secs=${1:-5} rounds=${2:-3}
[[ $EUID -eq 0 ]] || { echo "needs root" >&2; exit 1; }
"$(dirname "$0")/../scripts/deps" >/dev/null
p="wl$$-vx"
a="$p-a" b="$p-b"
cleanup() {
  [[ -f /tmp/$p.pid ]] && kill "$(cat "/tmp/$p.pid")" 2>/dev/null
  rm -f "/tmp/$p.pid"
  ip netns del "$a" 2>/dev/null || true; ip netns del "$b" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$a"; ip netns add "$b"
ip -n "$a" link add eth0 type veth peer name eth0 netns "$b"
i=1
for n in "$a" "$b"; do
  ip -n "$n" link set lo up
  ip -n "$n" link set eth0 up
  ip -n "$n" addr add "198.51.100.$i/24" dev eth0
  ip -n "$n" link add weft.vxlan type vxlan id 1 dstport 8472 local "198.51.100.$i" dev eth0 nolearning
  ip -n "$n" link set weft.vxlan address "0e:00:00:00:00:0$i" mtu 1450 up
  ip -n "$n" addr add "10.244.$i.0/32" dev weft.vxlan
  i=$((i + 1))
done
peer() { # ns my-index peer-index
  ip -n "$1" neigh replace "10.244.$3.0" lladdr "0e:00:00:00:00:0$3" dev weft.vxlan nud permanent
  bridge -n "$1" fdb replace "0e:00:00:00:00:0$3" dev weft.vxlan dst "198.51.100.$3" self permanent
  ip -n "$1" route replace "10.244.$3.0/24" via "10.244.$3.0" dev weft.vxlan onlink
}
peer "$a" 1 2; peer "$b" 2 1

# Mean receiver throughput in Mbit/s of `rounds` iperf3 runs.
result() { # on|off
  local sum=0 r n
  for n in "$a" "$b"; do ip netns exec "$n" ethtool -K weft.vxlan tx "$1" >/dev/null; done
  for _ in $(seq "$rounds"); do
    ip netns exec "$b" iperf3 -s -1 -D -B 10.244.2.0 --pidfile "/tmp/$p.pid" >/dev/null 2>&1 || true
    sleep 0.3
    r=$(ip netns exec "$a" timeout $((secs + 10)) iperf3 -c 10.244.2.0 -t "$secs" -J |
      python3 -c 'import json, sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e6))')
    ((r > 0)) || { echo "no traffic crossed the VXLAN link" >&2; exit 1; }
    sum=$((sum + r))
  done
  echo $((sum / rounds))
}
off=$(result off)
on=$(result on)
echo "kernel $(uname -r): TCP over VXLAN (iperf3), ${secs}s x ${rounds} rounds"
echo "  tx checksum offload off: ${off} Mbit/s"
echo "  tx checksum offload on:  ${on} Mbit/s"
