#!/usr/bin/env bash
# Runs cyclonus (github.com/mattfenwick/cyclonus at the version pinned in
# e2e/versions.env, built by e2e/upstream/build-policy) against the local
# cluster that is up (e2e/cluster, $WEFT_CLUSTER_DIR): it generates
# NetworkPolicy cases, applies each to 3 namespaces (x, y, z) of 3 agnhost
# pods (a, b, c) serving ports 80 and 81, probes every pair with
# `agnhost connect` through `kubectl exec` (the API server's exec), and
# compares what passed with the truth table it computes from the policies.
#
#   e2e/tests/cyclonus.sh --subset | --full [--part ingress|multi-peer|egress|other]
#                         [--kubeconfig FILE]
#
# --full: every case `cyclonus generate` makes (cyclonus's own default
# leaves out multi-peer, upstream-e2e, example, end-port and
# namespaces-by-default-label; this runs them too), except SCTP: this
# kernel has no SCTP, so the servers are TCP and UDP only. The 216 cases
# run as four parts that split them by tag, each its own cyclonus run
# with its own results file, so a run cut short keeps the parts it
# finished: ingress (51 cases with an ingress rule, one peer, no egress
# rule), multi-peer (45 with several peers and no egress rule; all have
# an ingress rule), egress (96 with an egress rule) and other (24 with
# neither: targets, deny-all and allow-all, cluster changes). --part runs
# one of them.
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
# The parts of --full: cyclonus selects by tag only (--include: any of
# these; --exclude: none of these), so the split is by direction, and the
# ingress cases by whether a rule has several peers.
declare -A PART_SELECT=(
  [ingress]="--include ingress --exclude egress,multi-peer,$EXCLUDE"
  [multi-peer]="--include multi-peer --exclude egress,$EXCLUDE"
  [egress]="--include egress --exclude $EXCLUDE"
  [other]="--exclude ingress,egress,$EXCLUDE"
)
# Bounds per part (s): about 45-70 s a case; 6 hours in all.
declare -A PART_LIMIT=([ingress]=4800 [multi-peer]=4200 [egress]=9000 [other]=3600)
FULL_PARTS=(ingress multi-peer egress other)
mode="" parts=() kubeconfig=$STATE/pki/admin.kubeconfig
usage="usage: $0 --subset | --full [--part ingress|multi-peer|egress|other] [--kubeconfig FILE]"
while (($#)); do
  case $1 in
    --subset | --full) mode=${1#--}; shift ;;
    --part)
      [[ -n ${PART_SELECT[${2:-}]:-} ]] || { echo "$usage" >&2; exit 2; }
      parts+=("$2"); shift 2 ;;
    --kubeconfig) kubeconfig=$2; shift 2 ;;
    *) mode=""; break ;;
  esac
done
[[ -n $mode ]] || { echo "$usage" >&2; exit 2; }
[[ $mode == full || ${#parts[@]} -eq 0 ]] || { echo "$usage" >&2; exit 2; }
if [[ $mode == subset ]]; then parts=(subset); elif ((${#parts[@]} == 0)); then parts=("${FULL_PARTS[@]}"); fi
[[ -s $STATE/prefix ]] || { echo "cyclonus: no local cluster is up at $STATE (e2e/cluster up)" >&2; exit 1; }
prefix=$(cat "$STATE/prefix")
POLICY=$("$E2E/upstream/build-policy")
K8S_BIN=$("$E2E/build-tools")
OUT=$STATE/logs/cyclonus-$mode
mkdir -p "$OUT"
kc() { ip netns exec "$prefix-cp" "$K8S_BIN/kubectl" --kubeconfig "$kubeconfig" "$@"; }

existing=$(kc get namespace "${NAMESPACES[@]}" --ignore-not-found -o name)
[[ -z $existing ]] || { echo "cyclonus: refusing to run: these namespaces exist already: $existing" >&2; exit 1; }
running=""
# Stop cyclonus first: deleting its namespaces under it would only make it fail.
trap '[[ -z $running ]] || { kill -TERM "$running" 2>/dev/null; wait "$running" 2>/dev/null; }
  kc delete namespace --ignore-not-found --timeout 120s "${NAMESPACES[@]}" >/dev/null 2>&1 || true' EXIT
trap 'exit 143' TERM INT HUP

"$E2E/cluster" import "$("$E2E/upstream/policy-images" "$STATE/images/policy")" >/dev/null

PROTOCOLS=TCP,UDP
common=(generate --server-protocol "$PROTOCOLS" --cleanup-namespaces
  --pod-creation-timeout-seconds 180 --perturbation-wait-seconds 5 --job-timeout-seconds 3 --retries 1)

# Runs one part: cyclonus's log and JUnit file go to $OUT/<part>.
run_part() {
  local part=$1 limit args rc=0 started=$SECONDS
  if [[ $part == subset ]]; then
    args=(--include "$SUBSET" --exclude "$SUBSET_EXCLUDE") limit=600
  else
    # shellcheck disable=SC2206 # the selection is words by design
    args=(${PART_SELECT[$part]}) limit=${PART_LIMIT[$part]}
  fi
  mkdir -p "$OUT/$part"
  rm -f "$OUT/$part/junit.xml"
  # cyclonus deletes its namespaces when it ends, and cannot create them
  # again while they terminate: the next part waits for them to go.
  kc wait --for=delete namespace "${NAMESPACES[@]}" --timeout 300s >/dev/null 2>&1 || true
  echo "cyclonus v$CYCLONUS_VERSION --$mode ($part): log $OUT/$part/cyclonus.log"
  # From the control plane's namespace, the only place that reaches the API
  # server; the probes themselves run in the pods.
  # timeout runs in a process group of its own, so a signal to this script
  # reaches cyclonus only through the trap below.
  timeout "$limit" ip netns exec "$prefix-cp" env KUBECONFIG="$kubeconfig" "$POLICY/cyclonus" \
    "${common[@]}" "${args[@]}" --junit-results-file "$OUT/$part/junit.xml" \
    >"$OUT/$part/cyclonus.log" 2>&1 &
  running=$!
  wait "$running" || rc=$?
  running=""
  echo "cyclonus ($part): finished in $((SECONDS - started)) s (exit $rc)"
  if [[ ! -s $OUT/$part/junit.xml ]]; then
    # Cut short (the time bound): what the log shows of the cases that finished.
    echo "cyclonus ($part): no results file (exit $rc): $(grep -c '^finished policy' "$OUT/$part/cyclonus.log") cases finished;" \
      "steps with a wrong probe: $(grep -cE '^[1-9][0-9]* wrong' "$OUT/$part/cyclonus.log"); see $OUT/$part/cyclonus.log" >&2
    return 1
  fi
}

incomplete=0 results=()
for part in "${parts[@]}"; do
  if run_part "$part"; then results+=("$part=$OUT/$part/junit.xml"); else incomplete=1; fi
done
((${#results[@]})) || exit 1
python3 - "$incomplete" "${results[@]}" <<'PY'
import sys
import xml.etree.ElementTree as ET
incomplete = sys.argv[1] == "1"
total, failed = 0, []
for arg in sys.argv[2:]:
    part, path = arg.split("=", 1)
    n, bad = 0, []
    for case in ET.parse(path).getroot().iter("testcase"):
        n += 1
        if case.find("failure") is not None or case.find("error") is not None:
            bad.append(case.get("name"))
    for name in bad:
        print(f"  FAIL ({part}) {name}")
    if len(sys.argv) > 3:
        print(f"cyclonus ({part}): {n} cases, {n - len(bad)} passed, {len(bad)} failed")
    total += n
    failed += bad
print(f"cyclonus: {total} cases, {total - len(failed)} passed, {len(failed)} failed"
      + (" (a part did not finish)" if incomplete else ""))
sys.exit(1 if failed or total == 0 or incomplete else 0)
PY
