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
p="wl$$-vx"
a="$p-a" b="$p-b"
cleanup() { ip netns del "$a" 2>/dev/null || true; ip netns del "$b" 2>/dev/null || true; }
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

result() { # on|off
  local sum=0 r
  for n in "$a" "$b"; do ip netns exec "$n" ethtool -K weft.vxlan tx "$1" >/dev/null; done
  for _ in $(seq "$rounds"); do
    local before after
    before=$(ip -n "$a" -s link show weft.vxlan | awk '/TX:/ {getline; print $1}')
    ip netns exec "$b" timeout $((secs + 3)) nc -l -p 5001 >/dev/null &
    local srv=$!
    sleep 0.3
    ip netns exec "$a" timeout "$secs" sh -c 'cat /dev/zero | nc 10.244.2.0 5001' >/dev/null 2>&1 || true
    wait "$srv" 2>/dev/null || true
    after=$(ip -n "$a" -s link show weft.vxlan | awk '/TX:/ {getline; print $1}')
    r=$(( (after - before) / secs / 1000000 ))
    sum=$((sum + r))
  done
  echo $((sum / rounds))
}
off=$(result off)
on=$(result on)
echo "kernel $(uname -r): TCP over VXLAN, ${secs}s x ${rounds} rounds"
echo "  tx checksum offload off: ${off} MB/s"
echo "  tx checksum offload on:  ${on} MB/s"
