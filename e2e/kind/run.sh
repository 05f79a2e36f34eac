#!/usr/bin/env bash
# weft on kind, for users with Docker: creates the cluster, builds and loads
# weft's image, installs the chart and runs the same connectivity checks as
# the local cluster (e2e/tests/connectivity.sh).
#   e2e/kind/run.sh [--backend vxlan|routes|auto] [--ip-family ipv4|ipv6|dual] [--keep]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
backend=auto family=dual keep=
while (($#)); do
  case $1 in
    --backend) backend=$2; shift 2 ;;
    --ip-family) family=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: $0 [--backend vxlan|routes|auto] [--ip-family ipv4|ipv6|dual] [--keep]" >&2; exit 2 ;;
  esac
done
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "kind e2e: $tool is required" >&2; exit 1; }
done
cleanup() { [[ -n $keep ]] || kind delete cluster --name weft >/dev/null 2>&1 || true; }
trap cleanup EXIT

config=$here/kind-config.yaml
case $family in
  dual) cidrs="{10.244.0.0/16,fd00:10:244::/56}" ;;
  ipv4) pod=10.244.0.0/16 svc=10.96.0.0/16 ;;
  ipv6) pod=fd00:10:244::/56 svc=fd00:10:96::/112 ;;
  *) echo "kind e2e: --ip-family must be ipv4, ipv6 or dual" >&2; exit 2 ;;
esac
if [[ $family != dual ]]; then
  config=$(mktemp)
  sed -e "s/ipFamily: dual/ipFamily: $family/" -e "s|podSubnet: .*|podSubnet: \"$pod\"|" \
    -e "s|serviceSubnet: .*|serviceSubnet: \"$svc\"|" "$here/kind-config.yaml" >"$config"
  cidrs="{$pod}"
fi
kind create cluster --config "$config" --wait 0s
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
image=ghcr.io/weft-net/weft:$version
docker build -t "$image" -f "$root/Containerfile" "$root"
kind load docker-image "$image" --name weft
helm install weft "$root/charts/weft" --namespace kube-system --kube-context kind-weft \
  --set "config.clusterCIDRs=$cidrs" --set "config.backend=$backend" --wait --timeout 5m
kubectl --context kind-weft wait --for=condition=Ready nodes --all --timeout 3m
KUBECTL="kubectl --context kind-weft" FAMILY=$family "$root/e2e/tests/connectivity.sh"
