#!/usr/bin/env bash
# Runs cyclonus (github.com/mattfenwick/cyclonus at the version pinned in
# e2e/versions.env, built by e2e/upstream/build-policy) against the local
# cluster that is up (e2e/cluster, $WEFT_CLUSTER_DIR): it generates
# NetworkPolicy cases, applies each to 3 namespaces (x, y, z) of 3 agnhost
# pods (a, b, c) serving ports 80 and 81, probes every pair with
# `agnhost connect` through `kubectl exec` (the API server's exec), and
# compares what passed with the truth table it computes from the policies.
#
#   e2e/tests/cyclonus.sh --subset | --full [--kubeconfig FILE]
#
# --full: every case `cyclonus generate` makes (cyclonus's own default
# leaves out multi-peer, upstream-e2e, example, end-port and
# namespaces-by-default-label; this runs them too), except SCTP: this
# kernel has no SCTP, so the servers are TCP and UDP only.
# --subset: the fixed subset scripts/test-all runs (about 6 minutes): the
# cases carrying any tag of SUBSET below, without the multi-peer ones.
#
# Refuses to start if namespaces x, y, z, y-2 or w exist (cyclonus would take
# them over); bounded; deletes them on exit, also on failure. Prints
# "cyclonus: N cases, P passed, F failed" and fails if any case failed.
set -Eeuo pipefail
E2E=$(cd "$(dirname "$0")/.." && pwd)
STATE=${WEFT_CLUSTER_DIR:-/var/tmp/weft-cluster}
# shellcheck disable=SC1091
. "$E2E/versions.env"
EXCLUDE=sctp
# The subset (5 cases, 6 probes of all 81 pairs on TCP and UDP, ports 80
# and 81): the four single-peer ipBlock cases (ingress and egress, with and
# without except) and "Create/update policy" (a policy replaced in place).
SUBSET=peer-ipblock,update-policy
SUBSET_EXCLUDE=$EXCLUDE,multi-peer,upstream-e2e
NAMESPACES=(x y z y-2 w)
mode="" kubeconfig=$STATE/pki/admin.kubeconfig
while (($#)); do
  case $1 in
    --subset | --full) mode=${1#--}; shift ;;
    --kubeconfig) kubeconfig=$2; shift 2 ;;
    *) mode=""; break ;;
  esac
done
[[ -n $mode ]] || { echo "usage: $0 --subset|--full [--kubeconfig FILE]" >&2; exit 2; }
[[ -s $STATE/prefix ]] || { echo "cyclonus: no local cluster is up at $STATE (e2e/cluster up)" >&2; exit 1; }
prefix=$(cat "$STATE/prefix")
POLICY=$("$E2E/upstream/build-policy")
K8S_BIN=$("$E2E/build-tools")
OUT=$STATE/logs/cyclonus-$mode
mkdir -p "$OUT"
kc() { ip netns exec "$prefix-cp" "$K8S_BIN/kubectl" --kubeconfig "$kubeconfig" "$@"; }

existing=$(kc get namespace "${NAMESPACES[@]}" --ignore-not-found -o name)
[[ -z $existing ]] || { echo "cyclonus: refusing to run: these namespaces exist already: $existing" >&2; exit 1; }
trap 'kc delete namespace --ignore-not-found --timeout 120s "${NAMESPACES[@]}" >/dev/null 2>&1 || true' EXIT

"$E2E/cluster" import "$("$E2E/upstream/policy-images" "$STATE/images/policy")" >/dev/null

PROTOCOLS=TCP,UDP
args=(generate --server-protocol "$PROTOCOLS" --cleanup-namespaces
  --pod-creation-timeout-seconds 180 --perturbation-wait-seconds 5 --job-timeout-seconds 3 --retries 1
  --junit-results-file "$OUT/junit.xml")
limit=21600
if [[ $mode == subset ]]; then
  args+=(--include "$SUBSET" --exclude "$SUBSET_EXCLUDE")
  limit=600
else
  args+=(--exclude "$EXCLUDE")
fi
rm -f "$OUT/junit.xml"
echo "cyclonus v$CYCLONUS_VERSION --$mode: log $OUT/cyclonus.log"
started=$SECONDS
rc=0
# From the control plane's namespace, the only place that reaches the API
# server; the probes themselves run in the pods.
timeout "$limit" ip netns exec "$prefix-cp" env KUBECONFIG="$kubeconfig" "$POLICY/cyclonus" "${args[@]}" \
  >"$OUT/cyclonus.log" 2>&1 || rc=$?
echo "cyclonus: finished in $((SECONDS - started)) s (exit $rc)"
if [[ ! -s $OUT/junit.xml ]]; then
  # Cut short (the time bound): what the log shows of the cases that finished.
  echo "cyclonus: no results file (exit $rc): $(grep -c '^finished policy' "$OUT/cyclonus.log") cases finished;" \
    "steps with a wrong probe: $(grep -cE '^[1-9][0-9]* wrong' "$OUT/cyclonus.log"); see $OUT/cyclonus.log" >&2
  exit 1
fi
python3 - "$OUT/junit.xml" <<'PY'
import sys
import xml.etree.ElementTree as ET
cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
total, failed = 0, []
for case in cases:
    total += 1
    if case.find("failure") is not None or case.find("error") is not None:
        failed.append(case.get("name"))
for name in failed:
    print(f"  FAIL {name}")
print(f"cyclonus: {total} cases, {total - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed or total == 0 else 0)
PY
