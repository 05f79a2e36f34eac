#!/usr/bin/env bash
# weft on kind: a cluster of one control plane and two workers (dual-stack by
# default, no default CNI) on an offline-built node image (e2e/kind/node-image),
# weft's image loaded into the nodes, weft installed with its chart, then the
# connectivity matrix (e2e/tests/connectivity.sh: pod to pod on a node and
# across nodes, both families, node and Service paths, egress masqueraded to
# the node's address) and a fixed subset of the upstream Kubernetes e2e
# (sig-network's Granular Checks and a few Netpol tests). Deletes the cluster
# at the end, even on failure.
#   e2e/kind/run.sh [--backend vxlan|routes|auto] [--ip-family ipv4|ipv6|dual] [--no-upstream] [--keep]
# Docker: the one $DOCKER_HOST (or the default socket) reaches, as on a
# laptop or GitHub's runners; when none answers and this is root with
# Debian's docker.io, e2e/kind/engine starts one in a network namespace of
# its own, everything that talks to the cluster runs inside it, and the
# machine's routes, links and nftables must be the same afterwards.
# --keep leaves the cluster up (with Docker of one's own only; context kind-weft).
set -Eeuo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck disable=SC1091
. "$root/e2e/versions.env"
cache=${WEFT_CACHE:-/var/cache/weft}
state=${WEFT_KIND_DIR:-/var/tmp/weft-kind}
backend=auto family=dual keep='' upstream=1 inside=''
usage() { echo "usage: $0 [--backend vxlan|routes|auto] [--ip-family ipv4|ipv6|dual] [--no-upstream] [--keep]" >&2; exit 2; }
while (($#)); do
  case $1 in
    --backend) backend=$2; shift 2 ;;
    --ip-family) family=$2; shift 2 ;;
    --no-upstream) upstream=; shift ;;
    --keep) keep=1; shift ;;
    --inside) inside=1; shift ;;
    *) usage ;;
  esac
done
case $family in dual | ipv4 | ipv6) ;; *) usage ;; esac
case $backend in vxlan | routes | auto) ;; *) usage ;; esac
# One clock for the run and its part inside the engine's namespace.
export WEFT_KIND_T0=${WEFT_KIND_T0:-$(date +%s)}
say() { printf '=== [%d s] %s\n' "$(($(date +%s) - WEFT_KIND_T0))" "$*"; }

# The upstream tests: Granular Checks (pod to pod and node to pod, HTTP and
# UDP, both families) and NetworkPolicy's basic allow and deny cases.
FOCUS='\[sig-network\] Networking Granular Checks: Pods |\[sig-network\] Netpol NetworkPolicy between server and client should (support a .default-deny-ingress. policy|support a .default-deny-all. policy|enforce policy to allow traffic from pods within server namespace based on PodSelector|enforce policy based on Ports)'
SKIPS=$(printf '%s\t%s\n' '\[Feature:SCTPConnectivity\]' 'this kernel has no SCTP sockets')

# ---------------------------------------------------------------- inside
kc() { kubectl --context kind-weft "$@"; }
# On any exit: the pods for the log when failing, then the cluster and the egress host go.
cleanup_inside() {
  local rc=$?
  ((rc == 0)) || kc get pods -A -o wide >&2 2>/dev/null || true
  docker rm -f weft-kind-ext >/dev/null 2>&1 || true
  [[ -n $keep ]] || "$KIND_BIN" delete cluster --name weft >/dev/null 2>&1 || true
  return "$rc"
}
# Everything that talks to the cluster: with the engine, this runs in its
# network namespace, where kind publishes the API server.
cluster_run() {
  local kind=$KIND_BIN bin=$K8S_BIN config node nodes cidrs
  export PATH=$bin:$PATH
  trap cleanup_inside EXIT
  trap 'exit 143' TERM INT

  config=$state/kind-config.yaml
  case $family in
    dual) cidrs="{10.244.0.0/16,fd00:10:244::/56}"; cp "$here/kind-config.yaml" "$config" ;;
    ipv4) cidrs="{10.244.0.0/16}"
      sed -e "s/ipFamily: dual/ipFamily: ipv4/" -e 's|podSubnet: .*|podSubnet: "10.244.0.0/16"|' \
        -e 's|serviceSubnet: .*|serviceSubnet: "10.96.0.0/16"|' "$here/kind-config.yaml" >"$config" ;;
    ipv6) cidrs="{fd00:10:244::/56}"
      sed -e "s/ipFamily: dual/ipFamily: ipv6/" -e 's|podSubnet: .*|podSubnet: "fd00:10:244::/56"|' \
        -e 's|serviceSubnet: .*|serviceSubnet: "fd00:10:96::/112"|' "$here/kind-config.yaml" >"$config" ;;
  esac
  "$kind" delete cluster --name weft >/dev/null 2>&1 || true
  say "kind create cluster ($family, image $NODE_IMAGE)"
  "$kind" create cluster --name weft --config "$config" --image "$NODE_IMAGE" --wait 0s --retain=false
  mapfile -t nodes < <("$kind" get nodes --name weft)

  say "loading weft's, the echo server's and the upstream tests' images into ${#nodes[@]} nodes"
  for node in "${nodes[@]}"; do
    for img in "$state"/images/*.tar; do
      docker exec -i "$node" ctr -n k8s.io images import --snapshotter overlayfs - <"$img" >/dev/null
    done
  done

  say "helm install weft (backend $backend)"
  helm install weft "$root/charts/weft" --namespace kube-system --kube-context kind-weft \
    --set "config.clusterCIDRs=$cidrs" --set "config.backend=$backend" --set image.pullPolicy=Never \
    --wait --timeout 5m
  kc wait --for=condition=Ready nodes --all --timeout 3m
  # Cluster DNS only: e2e/build-tools' CoreDNS lacks the metrics plugin that
  # kubeadm's Corefile names, and its forward to the node's resolv.conf
  # (Docker's resolver on a loopback address) loops back to CoreDNS itself;
  # without it no query leaves the cluster either.
  kc -n kube-system get configmap coredns -o yaml |
    sed -e '/^ *prometheus /d' -e '/^ *forward .*{$/,/^ *}$/d' -e '/^ *forward /d' | kc replace -f - >/dev/null
  kc -n kube-system rollout restart deployment/coredns >/dev/null
  kc -n kube-system rollout status deployment/coredns --timeout 3m

  # The egress target: a host on the nodes' Docker network, outside the
  # cluster's ranges (with the engine, inside its namespace like everything).
  docker rm -f weft-kind-ext >/dev/null 2>&1 || true
  docker run -d --name weft-kind-ext --network kind -e HOSTNAME=external "$ECHO_HOST_IMAGE" /weft-echo 8080 >/dev/null
  EXTERNAL_V4=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' weft-kind-ext)
  EXTERNAL_V6=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}' weft-kind-ext)
  [[ $family != ipv6 ]] || EXTERNAL_V4=$EXTERNAL_V6
  export EXTERNAL_V4 EXTERNAL_V6

  say "connectivity matrix ($family, $backend; egress to $EXTERNAL_V4 ${EXTERNAL_V6:-})"
  KUBECTL="kubectl --context kind-weft" FAMILY=$family ECHO_IMAGE=$ECHO_IMAGE "$root/e2e/tests/connectivity.sh"

  if [[ -n $upstream ]]; then
    say "upstream e2e subset (k8s.io/kubernetes v$K8S_VERSION)"
    local out=$state/upstream rc=0 workers
    rm -rf "$out"; mkdir -p "$out"
    workers=$(kc get nodes -l '!node-role.kubernetes.io/control-plane' --no-headers | wc -l)
    kubectl config view --raw --minify --context kind-weft >"$state/kubeconfig"
    timeout 1800 "$E2E_BIN/ginkgo" --focus="$FOCUS" --skip="$(cut -f1 <<<"$SKIPS" | paste -sd'|')" --no-color \
      --silence-skips --procs=2 --timeout=25m --json-report=report.json --output-dir="$out" "$E2E_BIN/e2e.test" -- \
      --provider=skeleton --kubeconfig="$state/kubeconfig" --kubectl-path="$bin/kubectl" --dns-domain=cluster.local \
      --num-nodes="$workers" --report-dir="$out" >"$out/e2e.log" 2>&1 || rc=$?
    python3 "$root/e2e/upstream/report.py" summary "$out/report.json" "$FOCUS" <<<"$SKIPS" ||
      { echo "kind e2e: upstream failures (ginkgo exit $rc) are in $out/e2e.log" >&2; exit 1; }
  fi
  if [[ -n $keep ]]; then say "kept: kubectl --context kind-weft"; fi
  say "kind e2e passed"
}

if [[ -n $inside ]]; then
  cluster_run
  exit 0
fi

# ---------------------------------------------------------------- outside
mkdir -p "$state"
engine=
if ! docker version >/dev/null 2>&1; then
  if [[ $(id -u) != 0 ]] || ! command -v dockerd >/dev/null; then
    echo "kind e2e: no Docker answers (set DOCKER_HOST, or run as root with docker.io installed)" >&2; exit 1
  fi
  [[ -z $keep ]] || { echo "kind e2e: --keep needs a Docker of your own (the engine stops at the end)" >&2; exit 2; }
  engine=1
fi

# The machine's own network, read only: it must be the same afterwards.
host_network() {
  ip -4 route show table all; ip -6 route show table all
  ip -o link | sed 's/ qlen [0-9]*//'
  nft list ruleset
}
finish() {
  local rc=$?
  if [[ -n $engine ]]; then
    "$here/engine" stop >/dev/null 2>&1 || rc=1
    if ! diff -u "$state/host-network.before" <(host_network) >&2; then
      echo "kind e2e: the machine's routes, links or nftables changed (diff above)" >&2
      rc=1
    fi
    if [[ -e /run/netns/${WEFT_ENGINE_NS:-weft-engine} ]] || pgrep -x dockerd >/dev/null; then
      echo "kind e2e: the engine's namespace or a dockerd is left behind" >&2
      rc=1
    fi
  fi
  say "end (exit $rc)"
  exit "$rc"
}
trap finish EXIT
# Stopped (timeout, Ctrl-C): stop the cluster part too, then clean up.
child=''
trap '[[ -z $child ]] || kill -TERM "$child" 2>/dev/null; exit 143' TERM INT
if [[ -n $engine ]]; then
  host_network >"$state/host-network.before"
  say "starting Docker in a network namespace of its own (e2e/kind/engine)"
  eval "$("$here/engine" start)"
fi

say "tools: Kubernetes $K8S_VERSION, helm, kind $KIND_VERSION, the upstream e2e suite (built once, cached)"
K8S_BIN=${WEFT_K8S_BIN:-$("$root/e2e/build-tools")}
if command -v kind >/dev/null && [[ $(kind version) == "kind v$KIND_VERSION "* ]]; then
  KIND_BIN=$(command -v kind)
else
  KIND_BIN=$cache/kind-v$KIND_VERSION/kind
  [[ -x $KIND_BIN ]] || "$root/e2e/build-tools" --with-kind >/dev/null
fi
E2E_BIN=
[[ -z $upstream ]] || E2E_BIN=$("$root/e2e/upstream/build")
export K8S_BIN KIND_BIN E2E_BIN

say "images: the kind node (e2e/kind/node-image), weft, the echo server, the upstream tests'"
NODE_IMAGE=$("$here/node-image")
rm -rf "$state/images"
mkdir -p "$state/images"
"$root/scripts/build-image" "$state/images/weft" >/dev/null
mv "$state/images/weft/"*.tar "$state/images/"
bins=$("$root/scripts/build-static")
ECHO_IMAGE=registry.weft.test/weft-echo:e2e
echo_root=$(mktemp -d)
install -D -m755 "$bins/weft-echo" "$echo_root/weft-echo"
install -D -m755 /bin/busybox "$echo_root/bin/busybox"
for a in sh ping ping6 nc wget ip cat sleep ls hostname nslookup; do ln -s busybox "$echo_root/bin/$a"; done
mkdir -p "$echo_root/etc" "$echo_root/tmp"
"$root/scripts/oci-image" "$echo_root" "$ECHO_IMAGE" "$state/images/echo.tar" /weft-echo >/dev/null
# The same files as a Docker image, for the egress target outside the cluster.
ECHO_HOST_IMAGE=weft.local/echo:e2e
docker rmi "$ECHO_HOST_IMAGE" >/dev/null 2>&1 || true
tar -C "$echo_root" -c . | docker import - "$ECHO_HOST_IMAGE" >/dev/null
rm -rf "$echo_root"
if [[ -n $upstream ]]; then
  "$root/e2e/upstream/images" "$E2E_BIN" "$K8S_BIN" "$bins/pause" "$state/images/upstream" >/dev/null
  mv "$state/images/upstream/"*.tar "$state/images/"
fi
export NODE_IMAGE ECHO_IMAGE ECHO_HOST_IMAGE

args=(--inside --backend "$backend" --ip-family "$family")
[[ -n $upstream ]] || args+=(--no-upstream)
[[ -z $keep ]] || args+=(--keep)
# In the background, so that a TERM or Ctrl-C reaches the trap at once
# (bash runs traps only between foreground commands); the engine's stop
# then ends everything in its namespace, the inner run included.
if [[ -n $engine ]]; then
  timeout 3000 "$here/engine" exec "$here/run.sh" "${args[@]}" &
else
  timeout 3000 "$here/run.sh" "${args[@]}" &
fi
child=$!
wait "$child"
