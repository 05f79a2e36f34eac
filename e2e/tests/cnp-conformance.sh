#!/usr/bin/env bash
# Runs the ClusterNetworkPolicy conformance suite of
# sigs.k8s.io/network-policy-api (its conformance/ Go test, at the version
# pinned in e2e/versions.env, built by e2e/upstream/build-policy) against
# the local cluster that is up (e2e/cluster, $WEFT_CLUSTER_DIR).
#
#   e2e/tests/cnp-conformance.sh [--kubeconfig FILE] [--run REGEX]
#
# Runs TestConformance only: the module's TestConformanceProfiles, without
# -conformance-profiles, runs the same tests again as a subtest.
# --kubeconfig: the cluster's kubeconfig (default: the local cluster's admin
# one); the suite runs from the control plane's network namespace, the only
# place that reaches the API server. --run: a `go test -run` filter under
# TestConformance (while developing; e.g. '^TestConformance$/CNPAdminTierGress').
#
# weft claims the standard channel's one feature, ClusterNetworkPolicy (Admin
# and Baseline tiers, priorities, Accept/Deny/Pass, namespace and pod
# selectors, CIDR peers, port numbers and ranges, TCP and UDP). Exempt, each
# with its reason (the README lists them too):
#   ClusterNetworkPolicyNamedPorts      experimental channel only: the standard
#                                       CRD the chart installs has no destinationNamedPort
#   ClusterNetworkPolicyEgressNodePeers experimental channel only: no `nodes` peer
#   the four *SCTP tests, and the SCTP  this kernel has no SCTP; see e2e/upstream/build-policy
#   probes and servers of the others
# The suite probes each pod's first address (status.podIP), so on a
# dual-stack cluster it checks the IPv4 family, on an IPv6-only one IPv6.
#
# Bounded (go test's own 40-minute timeout, then a hard one at 42); removes the
# suite's namespaces and ClusterNetworkPolicies on exit, also on failure.
# Prints "N passed, M failed, K skipped" and fails if any test failed.
set -Eeuo pipefail
E2E=$(cd "$(dirname "$0")/.." && pwd)
STATE=${WEFT_CLUSTER_DIR:-/var/tmp/weft-cluster}
# shellcheck disable=SC1091
. "$E2E/versions.env"
SUPPORTED=ClusterNetworkPolicy
EXEMPT=ClusterNetworkPolicyNamedPorts,ClusterNetworkPolicyEgressNodePeers
kubeconfig=$STATE/pki/admin.kubeconfig run='^TestConformance$'
while (($#)); do
  case $1 in
    --kubeconfig) kubeconfig=$2; shift 2 ;;
    --run) run=$2; shift 2 ;;
    *) echo "usage: $0 [--kubeconfig FILE] [--run REGEX]" >&2; exit 2 ;;
  esac
done
[[ -s $STATE/prefix ]] || { echo "cnp-conformance: no local cluster is up at $STATE (e2e/cluster up)" >&2; exit 1; }
prefix=$(cat "$STATE/prefix")
POLICY=$("$E2E/upstream/build-policy")
K8S_BIN=$("$E2E/build-tools")
OUT=$STATE/logs/cnp-conformance
mkdir -p "$OUT"
kc() { ip netns exec "$prefix-cp" "$K8S_BIN/kubectl" --kubeconfig "$kubeconfig" "$@"; }

kc get crd clusternetworkpolicies.policy.networking.k8s.io >/dev/null ||
  { echo "cnp-conformance: the ClusterNetworkPolicy CRD is not installed (the chart's clusterNetworkPolicy.enabled)" >&2; exit 1; }

# The suite removes what it made when it ends normally; this also covers a
# timeout or an interrupt. Its policies are the ones in its manifests.
manifests=${WEFT_CACHE:-/var/cache/weft}/build/network-policy-api-v$NETWORK_POLICY_API_VERSION/conformance/base
cleanup() {
  local d
  for d in admin_tier baseline_tier api_integration; do
    kc delete --ignore-not-found --wait=false -f "$manifests/$d" >/dev/null 2>&1 || true
  done
  kc delete namespace --ignore-not-found --timeout 120s network-policy-conformance-gryffindor \
    network-policy-conformance-slytherin network-policy-conformance-hufflepuff \
    network-policy-conformance-ravenclaw network-policy-conformance-forbidden-forrest >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$E2E/cluster" import "$("$E2E/upstream/policy-images" "$STATE/images/policy")" >/dev/null

echo "cnp-conformance: sigs.k8s.io/network-policy-api v$NETWORK_POLICY_API_VERSION, supported $SUPPORTED," \
  "exempt $EXEMPT and SCTP; log: $OUT/conformance.log"
started=$SECONDS
rc=0
# From the control plane's namespace, as e2e/upstream/run does.
timeout 2520 ip netns exec "$prefix-cp" env KUBECONFIG="$kubeconfig" "$POLICY/conformance.test" \
  -test.v -test.run "$run" -test.timeout 40m \
  -supported-features "$SUPPORTED" -exempt-features "$EXEMPT" -cleanup-base-resources=true \
  >"$OUT/conformance.log" 2>&1 || rc=$?
echo "cnp-conformance: finished in $((SECONDS - started)) s (exit $rc)"
# One line per test (the level under TestConformance), then the totals.
python3 - "$OUT/conformance.log" "$rc" <<'PY'
import re, sys
log, rc = sys.argv[1], int(sys.argv[2])
results = {}
for line in open(log, errors="replace"):
    m = re.match(r"^\s*--- (PASS|FAIL|SKIP): TestConformance/([^/\s]+) \(([\d.]+)s\)", line)
    if m:
        results[m.group(2)] = (m.group(1), float(m.group(3)))
for name, (verdict, secs) in sorted(results.items()):
    print(f"  {verdict:4} {name} ({secs:.0f} s)")
count = {v: sum(1 for r, _ in results.values() if r == v) for v in ("PASS", "FAIL", "SKIP")}
print(f"cnp-conformance: {count['PASS']} passed, {count['FAIL']} failed, {count['SKIP']} skipped")
if not results:
    print("cnp-conformance: no test ran (setup failed?); see the log", file=sys.stderr)
sys.exit(1 if rc != 0 or count["FAIL"] or not results else 0)
PY
