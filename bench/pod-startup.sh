#!/usr/bin/env bash
# Pod start-up through kubelet, weft against the reference plugins, on the
# local cluster (e2e/cluster), in the same run and on the same nodes:
#
#   bench/pod-startup.sh [--pods N] [--rounds R] [--out FILE]
#
# Each round creates N bare pods (the pause image, already on the nodes;
# spread over the workers by the scheduler) in one `kubectl create`, and a
# watch timestamps, on one clock, when each pod first appears and when it
# turns Ready: creation to Ready, per pod. Then the pods are deleted and
# the other CNI gets its round; rounds alternate weft / ptp so that a
# change in the machine's load hits both alike. A first round of each,
# of at most 10 pods and not counted, warms the nodes up.
#
# "ptp": on every worker, a conflist named to sort before weft's
# (containerd uses the first) with `ptp` + `host-local` over the node's
# IPv4 podCIDR, followed by the same chained plugins as weft's (portmap),
# so the only difference is the first plugin. weft-agent keeps running.
#
# The CNI's share of sandbox creation, from the nodes' own metrics over
# each CNI's rounds: containerd's `sandbox_create_network` (the pod's
# network namespace plus CNI ADD) against kubelet's `run_podsandbox`
# (RunPodSandbox as kubelet sees it).
#
# Uses the cluster that is up (its IPv4 family), else brings up a two-node
# IPv4 `routes` cluster and removes it at the end. Writes JSON (stdout, or
# --out). Timings are never judged.
set -Eeuo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
E2E=$(dirname "$BENCH")/e2e
# shellcheck disable=SC1091
. "$E2E/lib.sh"
STATE=${WEFT_CLUSTER_DIR:-/var/tmp/weft-cluster}
pods=100 rounds=3 out=
while (($#)); do
  case $1 in
    --pods) pods=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--pods N] [--rounds R] [--out FILE]" >&2; exit 2 ;;
  esac
done
[[ $pods =~ ^[1-9][0-9]*$ && $rounds =~ ^[1-9][0-9]*$ ]] || { echo "$0: --pods and --rounds take positive numbers" >&2; exit 2; }

own_cluster=0
if [[ ! -s $STATE/prefix ]]; then
  own_cluster=1
  timeout 600 "$E2E/cluster" up --nodes 2 --ip-family ipv4 --backend routes >/dev/null
fi
data=$(mktemp -d /tmp/weft-pod-startup.XXXXXX)
NS=bench-startup
workers=$(K get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[*].metadata.name}')
cleanup() {
  K delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  for n in $workers; do
    rm -rf "$STATE/nodes/$n/etc/cni/net.d/00-bench-ptp.conflist" "$STATE/nodes/$n/opt/cni/bin/ptp" \
      "$STATE/nodes/$n/opt/cni/bin/host-local" "$STATE/nodes/$n/var/lib/cni/bench-ptp"
  done
  rm -rf "$data"
  if ((own_cluster)); then "$E2E/cluster" down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
K create namespace "$NS" >/dev/null
# The namespace's service account must exist before pods can be created in it.
eventually 30 K get serviceaccount default -n "$NS" || { echo "$0: no default service account in $NS" >&2; exit 1; }

use_cni() { # weft|ptp
  local n cidr
  for n in $workers; do
    local dir=$STATE/nodes/$n
    if [[ $1 == ptp ]]; then
      install -m755 /usr/lib/cni/ptp /usr/lib/cni/host-local "$dir/opt/cni/bin/"
      cidr=$(K get node "$n" -o jsonpath='{.spec.podCIDRs[0]}')
      # host-local shares the node's subnet with weft's IPAM: it gets the
      # half of it that no live pod (CoreDNS) holds an address in.
      K get pods -A -o json >"$data/pods-now.json"
      python3 - "$dir/etc/cni/net.d/10-weft.conflist" "$cidr" "$n" "$data/pods-now.json" \
        >"$dir/etc/cni/net.d/.00-bench-ptp.tmp" <<'PY'
import ipaddress, json, sys
weft, node = json.load(open(sys.argv[1])), sys.argv[3]
net = ipaddress.ip_network(sys.argv[2])
live = {ipaddress.ip_address(i["ip"]) for p in json.load(open(sys.argv[4]))["items"]
        if p["spec"].get("nodeName") == node and not p["spec"].get("hostNetwork")
        for i in (p.get("status") or {}).get("podIPs") or [] if ":" not in i["ip"]}
lower, upper = net.subnets(1)
half = next((h for h in (upper, lower) if not any(a in h for a in live)), None)
if half is None:
    sys.exit(f"pod-startup: live pods on {node} hold addresses in both halves of {net}; no room for host-local")
hosts = list(half.hosts())
first = weft["plugins"][0]
ptp = {"type": "ptp", "mtu": first.get("mtu", 1500), "ipMasq": False,
       "ipam": {"type": "host-local", "dataDir": "/var/lib/cni/bench-ptp",
                "ranges": [[{"subnet": str(net), "rangeStart": str(hosts[1]), "rangeEnd": str(hosts[-1])}]]}}
print(json.dumps({"cniVersion": "1.0.0", "name": "bench-ptp", "plugins": [ptp] + weft["plugins"][1:]}))
PY
      mv "$dir/etc/cni/net.d/.00-bench-ptp.tmp" "$dir/etc/cni/net.d/00-bench-ptp.conflist"
    else
      rm -f "$dir/etc/cni/net.d/00-bench-ptp.conflist"
    fi
  done
  # containerd reloads its CNI config on a file event; give it a moment.
  sleep 2
}

# Sums and counts of the two timers on every worker, as one JSON object.
scrape() {
  local n
  for n in $workers; do
    "$E2E/cluster" exec "$n" -- curl -sf --max-time 5 http://127.0.0.1:1338/v1/metrics | sed "s/^/containerd $n /"
    K get --raw "/api/v1/nodes/$n/proxy/metrics" | sed "s/^/kubelet $n /"
  done | python3 -c '
import json, re, sys
want = {"containerd": [("create_network", r"containerd_cri_sandbox_create_network_seconds_(sum|count)\b")],
        "kubelet": [("run_podsandbox", r"kubelet_runtime_operations_duration_seconds_(sum|count)\{.*operation_type=\"run_podsandbox\"")]}
acc = {}
for line in sys.stdin:
    src, _node, text = line.split(" ", 2)
    for key, pat in want.get(src, []):
        m = re.match(pat, text)
        if m:
            acc.setdefault(key, {"sum": 0.0, "count": 0.0})[m.group(1)] += float(text.split()[-1])
json.dump(acc, sys.stdout)'
}

# One round: N pods created at once; a watch stamps, as each event arrives,
# when each pod first appears and when it turns Ready (one clock for both).
round() { # cni round pods
  local name=s-$1-$2 count=$3
  python3 - "$E2E/cluster" "$NS" "$name" "$count" "$data/$name.json" <<'PY' &
import json, subprocess, sys, time
cluster, ns, name, n, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
watch = subprocess.Popen([cluster, "kubectl", "get", "pods", "-n", ns, "-l", f"bench={name}", "-w",
                          "--output-watch-events", "-o", "json"], stdout=subprocess.PIPE, text=True)
seen, ready, buf = {}, {}, ""
for line in watch.stdout:
    buf += line
    try:  # one event per line (kubectl may also indent it over several)
        event = json.loads(buf)
    except ValueError:
        continue
    now, buf = time.time(), ""
    pod = event["object"]
    pname = pod["metadata"]["name"]
    seen.setdefault(pname, now)
    conds = (pod.get("status") or {}).get("conditions") or []
    if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
        ready.setdefault(pname, now)
    if len(ready) == n:
        break
watch.kill()
json.dump({p: ready[p] - seen[p] for p in ready}, open(out, "w"))
PY
  local watcher=$!
  sleep 2
  python3 - "$name" "$count" <<'PY' | K create -n "$NS" -f - >/dev/null
import json, sys
name, n = sys.argv[1], int(sys.argv[2])
items = [{"apiVersion": "v1", "kind": "Pod",
          "metadata": {"name": f"{name}-{i}", "labels": {"bench": name}},
          "spec": {"terminationGracePeriodSeconds": 0, "automountServiceAccountToken": False,
                   "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10", "imagePullPolicy": "IfNotPresent"}]}}
         for i in range(n)]
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
PY
  local ok=1
  K wait -n "$NS" --for=condition=Ready pod -l "bench=$name" --timeout=300s >/dev/null || ok=0
  if ((ok)) && ! timeout 30 tail --pid="$watcher" -f /dev/null; then ok=0; fi
  kill "$watcher" 2>/dev/null || true
  wait "$watcher" 2>/dev/null || true
  if ((!ok)) || [[ ! -s $data/$name.json ]]; then
    K get pods -n "$NS" -l "bench=$name" -o wide | grep -v ' Running ' >&2 || true
    echo "$0: $1 round $2: pods not Ready in 300 s" >&2
    return 1
  fi
  K delete pods -n "$NS" -l "bench=$name" --wait=true --timeout=300s >/dev/null
}

# Round 0 warms both up (images unpacked, plugins paged in) and is not
# counted: a few pods do that as well as 100, in a sixth of the time.
warm=$((pods < 10 ? pods : 10))
for ((r = 0; r <= rounds; r++)); do
  for cni in weft ptp; do
    use_cni "$cni"
    scrape >"$data/$cni-$r.before"
    round "$cni" "$r" "$((r == 0 ? warm : pods))"
    scrape >"$data/$cni-$r.after"
  done
done
use_cni weft

python3 - "$data" "$pods" "$rounds" <<'PY' >"${out:-/dev/stdout}"
import glob, json, os, sys
data, pods, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
result = {"pods": pods, "rounds": rounds, "cnis": {}}
for cni in ("weft", "ptp"):
    ready_ms = []
    timers = {}
    for r in range(1, rounds + 1):
        ready_ms += [v * 1000 for v in json.load(open(os.path.join(data, f"s-{cni}-{r}.json"))).values()]
        b = json.load(open(os.path.join(data, f"{cni}-{r}.before")))
        a = json.load(open(os.path.join(data, f"{cni}-{r}.after")))
        for k in a:
            t = timers.setdefault(k, {"sum": 0.0, "count": 0.0})
            for f in ("sum", "count"):
                t[f] += a[k][f] - b.get(k, {}).get(f, 0.0)
    result["cnis"][cni] = {"ready_ms": sorted(ready_ms), "timers": timers}
json.dump(result, sys.stdout)
print()
PY
