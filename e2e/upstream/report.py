"""Helpers of e2e/upstream/run.

  report.py check-routes            < "namespace<TAB>route" lines
  report.py list    REPORT FOCUS    < skip rules ("regex<TAB>reason" lines)
  report.py summary REPORT FOCUS    < skip rules

REPORT is a ginkgo v2 JSON report (--json-report). Go's RE2 and Python's re
agree on the patterns the rules use (literals, classes, alternation).
"""

import ipaddress
import json
import re
import sys

# The lab's address plan (shared/design.md): nodes, pods, Services, the
# external host, link-local and multicast. Nothing else may be routed.
LAB = [
    ipaddress.ip_network(n)
    for n in (
        "198.51.100.0/24", "203.0.113.0/24", "10.244.0.0/16", "10.96.0.0/16",
        "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4",
        "2001:db8::/32", "fd00:10:244::/56", "fd00:10:96::/112",
        "::1/128", "fe80::/10", "ff00::/8",
    )
]
ROUTE_TYPES = {"local", "broadcast", "multicast", "anycast", "unicast", "unreachable", "prohibit", "blackhole", "throw", "nat"}
FAILED = {"failed", "panicked", "interrupted", "aborted", "timedout"}


def check_routes(lines):
    bad = []
    for line in lines:
        ns, _, route = line.rstrip("\n").partition("\t")
        words = route.split()
        if not words:
            continue
        dest = words[1] if words[0] in ROUTE_TYPES and len(words) > 1 else words[0]
        if dest == "default":
            bad.append(f"{ns}: default route: {route}")
            continue
        try:
            net = ipaddress.ip_network(dest, strict=False)
        except ValueError:
            bad.append(f"{ns}: unparsable route: {route}")
            continue
        if not any(net.version == lab.version and net.subnet_of(lab) for lab in LAB):
            bad.append(f"{ns}: route outside the lab: {route}")
    for b in bad:
        print(b, file=sys.stderr)
    return 1 if bad else 0


def specs(path):
    with open(path) as f:
        suites = json.load(f)
    for suite in suites:
        for s in suite.get("SpecReports") or []:
            if s.get("LeafNodeType") != "It":
                continue
            text = " ".join((s.get("ContainerHierarchyTexts") or []) + [s.get("LeafNodeText", "")])
            message = ((s.get("Failure") or {}).get("Message") or "").strip()
            yield text, s.get("State", ""), message


def rules(lines):
    out = []
    for line in lines:
        regex, _, reason = line.rstrip("\n").partition("\t")
        if regex:
            out.append((re.compile(regex), reason))
    return out


def rule_for(text, skip_rules):
    for regex, reason in skip_rules:
        if regex.search(text):
            return regex.pattern, reason
    return None


def list_tests(path, focus, skip_rules):
    focus = re.compile(focus)
    selected, skipped = [], {}
    for text, _, _ in specs(path):
        if not focus.search(text):
            continue
        rule = rule_for(text, skip_rules)
        if rule:
            skipped.setdefault(rule, []).append(text)
        else:
            selected.append(text)
    print(f"selected ({len(selected)}):")
    for t in sorted(selected):
        print(f"  {t}")
    for (pattern, reason), texts in skipped.items():
        print(f"skipped by /{pattern}/ ({len(texts)}): {reason}")
        for t in sorted(texts):
            print(f"  {t}")
    return 0


def summary(path, focus, skip_rules):
    focus = re.compile(focus)
    passed, failed, by_rule, self_skipped = [], [], {}, []
    for text, state, message in specs(path):
        if state == "passed":
            passed.append(text)
        elif state in FAILED:
            failed.append((text, message))
        elif state == "skipped" and message:
            self_skipped.append((text, message))
        elif state == "skipped" and focus.search(text):
            rule = rule_for(text, skip_rules)
            by_rule.setdefault(rule[1] if rule else "not selected", []).append(text)
    for reason, texts in by_rule.items():
        print(f"skipped ({len(texts)}): {reason}")
    for text, message in self_skipped:
        print(f"skipped by the test itself: {text}: {message.splitlines()[0]}")
    for text, message in failed:
        first = message.splitlines()[0] if message else ""
        print(f"FAILED: {text}: {first}")
    skipped = sum(len(t) for t in by_rule.values()) + len(self_skipped)
    print(f"{len(passed)} passed, {len(failed)} failed, {skipped} skipped")
    return 1 if failed or not passed else 0


def main():
    verb = sys.argv[1] if len(sys.argv) > 1 else ""
    if verb == "check-routes":
        return check_routes(sys.stdin)
    if verb in ("list", "summary") and len(sys.argv) == 4:
        fn = list_tests if verb == "list" else summary
        return fn(sys.argv[2], sys.argv[3], rules(sys.stdin))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
