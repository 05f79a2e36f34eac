//! NetworkPolicy from a pod's first packet: the "pending" interface groups
//! and `policy-namespaces.json`, the file that tells the plugin which
//! namespaces have NetworkPolicies.
//!
//! Between CNI ADD and the moment weft-agent learns a new pod's address and
//! labels from the API server, the pod's policy rules cannot be in the
//! kernel yet. So the plugin creates the host veth of a pod whose namespace
//! has isolating policies in a pending group (`IFLA_GROUP`, set in the same
//! `RTM_NEWLINK` that creates the veth: no extra syscall), the policy table
//! drops new connections to (ingress) or from (egress) interfaces in those
//! groups, and the agent moves the veth to group 0 once the pod's rules
//! are in the kernel.
//!
//! The agent writes the file (temp file + rename, so the plugin reads the
//! old list or the new one), next to `node.json`; the plugin reads it on
//! ADD only, and never calls the agent or the API server.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::file::FileError;

/// The group of every interface that is not pending (the kernel's default).
pub const READY_GROUP: u32 = 0;
/// Pending for ingress: the pod's namespace has ingress-isolating policies.
/// Numbers after weft's route protocol 87, so `ip -d link` shows
/// `group 8701` and an operator can tell whose it is.
pub const PENDING_INGRESS_GROUP: u32 = 8701;
/// Pending for egress.
pub const PENDING_EGRESS_GROUP: u32 = 8702;
/// Pending for both directions.
pub const PENDING_BOTH_GROUP: u32 = 8703;

/// The groups whose new connections the ingress chain drops.
pub const PENDING_INGRESS_GROUPS: [u32; 2] = [PENDING_INGRESS_GROUP, PENDING_BOTH_GROUP];
/// The groups whose new connections the egress chain drops.
pub const PENDING_EGRESS_GROUPS: [u32; 2] = [PENDING_EGRESS_GROUP, PENDING_BOTH_GROUP];

/// The group a new pod's host veth is created in.
pub fn pending_group(ingress: bool, egress: bool) -> u32 {
    match (ingress, egress) {
        (false, false) => READY_GROUP,
        (true, false) => PENDING_INGRESS_GROUP,
        (false, true) => PENDING_EGRESS_GROUP,
        (true, true) => PENDING_BOTH_GROUP,
    }
}

/// Whether `group` is one of weft's pending groups.
pub fn is_pending(group: u32) -> bool {
    matches!(group, PENDING_INGRESS_GROUP | PENDING_EGRESS_GROUP | PENDING_BOTH_GROUP)
}

/// The longest pod UID recorded on a host veth. Kubernetes UIDs are
/// 36-character UUIDs (a static pod's is a 32-digit hash); the bound keeps
/// the alias far below the kernel's `IFALIASZ` (256).
pub const MAX_POD_UID_LEN: usize = 64;

/// Whether `uid` (`K8S_POD_UID` from `CNI_ARGS`) has the form of a pod
/// UID: 1 to [`MAX_POD_UID_LEN`] ASCII letters, digits and `-`. Anything
/// else (a runtime's junk, a hostile value) is not recorded, so it can
/// neither forge the alias's fields nor overflow it.
pub fn is_pod_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= MAX_POD_UID_LEN && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The alias of a pod's host veth: `weft pod <container id prefix>`, then
/// ` uid <pod UID>` when the runtime passed a valid one. The agent releases
/// a pending veth only for the live pod with that UID ([`alias_pod_uid`]).
pub fn veth_alias(container_id: &str, pod_uid: Option<&str>) -> String {
    let cid = container_id.get(..12).unwrap_or(container_id);
    match pod_uid.filter(|u| is_pod_uid(u)) {
        Some(uid) => format!("weft pod {cid} uid {uid}"),
        None => format!("weft pod {cid}"),
    }
}

/// The pod UID a host veth's alias records, if it is one of weft's and
/// records one.
pub fn alias_pod_uid(alias: &str) -> Option<&str> {
    let (_, uid) = alias.strip_prefix("weft pod ")?.split_once(" uid ")?;
    is_pod_uid(uid).then_some(uid)
}

/// File name of the list, in the directory of `node.json`.
pub const FILE_NAME: &str = "policy-namespaces.json";

/// Format version written in the file.
pub const VERSION: u32 = 1;

/// The file next to the node config at `node_config`.
pub fn path_next_to(node_config: &Path) -> PathBuf {
    node_config.parent().unwrap_or(Path::new(".")).join(FILE_NAME)
}

/// The namespaces that have at least one NetworkPolicy isolating its pods
/// for ingress, and for egress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyNamespaces {
    /// [`VERSION`].
    pub version: u32,
    /// Namespaces with an ingress-isolating policy.
    pub ingress: BTreeSet<String>,
    /// Namespaces with an egress-isolating policy.
    pub egress: BTreeSet<String>,
    /// The directions in which a pod of a namespace the agent has not seen
    /// yet starts pending: a ClusterNetworkPolicy's namespace selector may
    /// select a namespace created after the agent's last view of them.
    /// Written only when some direction is held.
    #[serde(default, skip_serializing_if = "Unseen::is_open")]
    pub unseen: Unseen,
    /// Every namespace the agent had seen when it wrote the file (those not
    /// listed above are selected by no policy); written with `unseen`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub seen: BTreeSet<String>,
}

/// Whether pods of namespaces outside [`PolicyNamespaces::seen`] start
/// pending, by direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unseen {
    /// Held for ingress.
    pub ingress: bool,
    /// Held for egress.
    pub egress: bool,
}

impl Unseen {
    /// Neither direction held.
    pub fn is_open(&self) -> bool {
        !self.ingress && !self.egress
    }
}

/// What the plugin makes of the file for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The group to create the host veth in.
    pub group: u32,
    /// Why the file could not be read, when it could not: worth a warning.
    pub unreadable: Option<String>,
}

impl PolicyNamespaces {
    /// Decodes the file's content; the error says what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<PolicyNamespaces, String> {
        let list: PolicyNamespaces = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if list.version != VERSION {
            return Err(format!("format version {} is not {VERSION}", list.version));
        }
        Ok(list)
    }

    /// The file's content as the agent writes it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec(self).unwrap_or_default();
        json.push(b'\n');
        json
    }

    /// The group of a new pod in `namespace`.
    pub fn group_for(&self, namespace: &str) -> u32 {
        let unseen = !self.seen.contains(namespace);
        pending_group(
            self.ingress.contains(namespace) || (unseen && self.unseen.ingress),
            self.egress.contains(namespace) || (unseen && self.unseen.egress),
        )
    }

    /// Writes the file atomically unless it already holds this list;
    /// returns whether it wrote.
    pub fn write_if_changed(&self, path: &Path) -> Result<bool, FileError> {
        crate::file::replace_if_changed(path, &self.to_json())
    }
}

/// The group of a new pod in `namespace` (from `K8S_POD_NAMESPACE`), from
/// the file at `path`. One small read, no API call.
///
/// - No namespace (not run by Kubernetes): no policy can select the pod,
///   and the agent would never learn it to release it: ready.
/// - No file: the agent has NetworkPolicy disabled, or has not listed the
///   policies yet on a fresh node: ready, as before this mechanism.
/// - A file that cannot be read or decoded (a newer agent's format, a
///   truncated disk, a bug): pending in both directions. Opening a pod a
///   policy isolates is the failure this file exists to prevent, and a
///   pending pod costs little: the agent releases every pod it learns, so
///   the pod is only held until then.
pub fn verdict(path: &Path, namespace: Option<&str>) -> Verdict {
    let Some(namespace) = namespace.filter(|n| !n.is_empty()) else {
        return Verdict { group: READY_GROUP, unreadable: None };
    };
    let fail_closed = |why: String| Verdict {
        group: PENDING_BOTH_GROUP,
        unreadable: Some(format!("{}: {why}; the pod is held until weft-agent learns it", path.display())),
    };
    // Bounded: a real list is a few KiB; a huge file is not one.
    const MAX: u64 = 4 << 20;
    match crate::file::read_bounded(path, MAX) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Verdict { group: READY_GROUP, unreadable: None },
        Err(e) => fail_closed(e.to_string()),
        Ok(bytes) => match PolicyNamespaces::from_json(&bytes) {
            Ok(list) => Verdict { group: list.group_for(namespace), unreadable: None },
            Err(why) => fail_closed(why),
        },
    }
}

/// Removes the file (NetworkPolicy disabled, `weft-agent cleanup`); a
/// missing file is fine.
pub fn remove(path: &Path) -> Result<bool, FileError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(FileError { op: "remove", path: path.to_path_buf(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(ingress: &[&str], egress: &[&str]) -> PolicyNamespaces {
        PolicyNamespaces {
            version: VERSION,
            ingress: ingress.iter().map(|s| s.to_string()).collect(),
            egress: egress.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn namespaces_the_agent_has_not_seen_are_held_when_a_cluster_policy_may_select_them() {
        let mut l = list(&["a"], &[]);
        l.unseen = Unseen { ingress: false, egress: true };
        l.seen = ["a", "b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(l.group_for("a"), PENDING_INGRESS_GROUP, "seen, listed for ingress only");
        assert_eq!(l.group_for("b"), READY_GROUP, "seen and selected by nothing");
        assert_eq!(l.group_for("new"), PENDING_EGRESS_GROUP, "not seen yet: held where a policy may select it");
        assert_eq!(PolicyNamespaces::from_json(&l.to_json()).unwrap(), l);
        // Without cluster policies the written form is the older one.
        assert!(!String::from_utf8(list(&["a"], &[]).to_json()).unwrap().contains("unseen"));
    }

    #[test]
    fn groups_follow_the_directions_of_the_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_next_to(&dir.path().join("node.json"));
        assert_eq!(path, dir.path().join(FILE_NAME));
        assert!(list(&["a", "b"], &["b", "c"]).write_if_changed(&path).unwrap());
        assert!(!list(&["a", "b"], &["b", "c"]).write_if_changed(&path).unwrap(), "unchanged: not rewritten");
        let group = |ns: Option<&str>| {
            let v = verdict(&path, ns);
            assert_eq!(v.unreadable, None);
            v.group
        };
        assert_eq!(group(Some("a")), PENDING_INGRESS_GROUP);
        assert_eq!(group(Some("b")), PENDING_BOTH_GROUP);
        assert_eq!(group(Some("c")), PENDING_EGRESS_GROUP);
        assert_eq!(group(Some("d")), READY_GROUP);
        assert_eq!(group(None), READY_GROUP, "not a Kubernetes pod");
        assert_eq!(group(Some("")), READY_GROUP);
        for g in [PENDING_INGRESS_GROUP, PENDING_EGRESS_GROUP, PENDING_BOTH_GROUP] {
            assert!(is_pending(g));
            assert_eq!(PENDING_INGRESS_GROUPS.contains(&g), g != PENDING_EGRESS_GROUP);
            assert_eq!(PENDING_EGRESS_GROUPS.contains(&g), g != PENDING_INGRESS_GROUP);
        }
        assert!(!is_pending(READY_GROUP) && !is_pending(1));
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap(), "already gone is fine");
        assert_eq!(group(Some("a")), READY_GROUP, "no file: no policy namespaces");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temp file left");
    }

    #[test]
    fn a_file_that_cannot_be_read_holds_every_pod_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        for (content, why) in [
            (&b"{"[..], "EOF"),
            (br#"{"version":2,"ingress":[],"egress":[]}"#, "format version 2"),
            (br#"{"version":1,"ingress":["a"]}"#, "missing field"),
            (br#"{"version":1,"ingress":[7],"egress":[]}"#, "invalid type"),
            (br#"{"version":1,"ingress":[],"egress":[],"more":1}"#, "unknown field"),
            (b"\xff\xfe", "expected value"),
            (b"", "EOF"),
        ] {
            std::fs::write(&path, content).unwrap();
            let v = verdict(&path, Some("x"));
            assert_eq!(v.group, PENDING_BOTH_GROUP, "{content:?}");
            let msg = v.unreadable.unwrap();
            assert!(msg.contains(why) && msg.contains(FILE_NAME), "{content:?}: {msg}");
            // Without a namespace the file is not even read.
            assert_eq!(verdict(&path, None).group, READY_GROUP);
        }
        // A directory where the file should be: unreadable too.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert_eq!(verdict(&path, Some("x")).group, PENDING_BOTH_GROUP);
        // A FIFO in its place: ADD must not wait for a writer that never comes.
        std::fs::remove_dir(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let v = verdict(&path, Some("x"));
        assert_eq!(v.group, PENDING_BOTH_GROUP);
        assert!(v.unreadable.unwrap().contains("is a FIFO"));
        // Larger than any real list: refused without reading it all.
        std::fs::remove_file(&path).unwrap();
        std::fs::File::create(&path).unwrap().set_len(5 << 20).unwrap();
        assert!(verdict(&path, Some("x")).unreadable.unwrap().contains("larger than"));
    }

    #[test]
    fn the_alias_records_a_valid_pod_uid_and_nothing_else() {
        let cid = "0123456789abcdef0123";
        let uid = "6f1c9d2e-8a4b-4c3d-9e2f-0a1b2c3d4e5f";
        let alias = veth_alias(cid, Some(uid));
        assert_eq!(alias, format!("weft pod 0123456789ab uid {uid}"));
        assert_eq!(alias_pod_uid(&alias), Some(uid));
        // A static pod's UID is a hash without dashes.
        assert_eq!(alias_pod_uid(&veth_alias(cid, Some("0123456789abcdef0123456789abcdef"))).map(str::len), Some(32));
        assert_eq!(veth_alias("short", None), "weft pod short");
        assert_eq!(alias_pod_uid("weft pod short"), None, "no UID recorded");
        for hostile in
            ["", "a b", "x uid y", "a\nb", "ü", "a;b", "../x", &"a".repeat(MAX_POD_UID_LEN + 1), &"a".repeat(4096)]
        {
            let alias = veth_alias(cid, Some(hostile));
            assert_eq!(alias, "weft pod 0123456789ab", "{hostile:?} is not recorded");
            assert_eq!(alias_pod_uid(&format!("weft pod 0123456789ab uid {hostile}")), None, "{hostile:?}");
        }
        assert!(veth_alias(&"c".repeat(200), Some(&"u".repeat(MAX_POD_UID_LEN))).len() < 256, "IFALIASZ");
        assert_eq!(alias_pod_uid(&format!("other uid {uid}")), None, "not weft's alias");
    }

    #[test]
    fn the_written_form_round_trips() {
        let l = list(&["kube-system", "team-a"], &[]);
        assert_eq!(PolicyNamespaces::from_json(&l.to_json()).unwrap(), l);
        assert_eq!(
            String::from_utf8(l.to_json()).unwrap(),
            "{\"version\":1,\"ingress\":[\"kube-system\",\"team-a\"],\"egress\":[]}\n"
        );
    }
}
