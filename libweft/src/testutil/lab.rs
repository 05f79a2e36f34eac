//! The test underlay of the design's address plan, shared by the
//! privileged tests and the benchmarks: segment A (198.51.100.0/24,
//! 2001:db8:a::/64) and segment B (203.0.113.0/25, 2001:db8:b::/64) as the
//! bridges `brA` and `brB` in a lab namespace, joined by a router namespace
//! at .1 / ::1 on each. Nothing is linked to the machine's own namespace.

use std::path::Path;

use super::TestNs;
use super::control_plane::ControlPlane;

/// The API server's address on segment A.
pub const CP_IP: &str = "198.51.100.2";

/// Both segments and the router between them.
pub struct Segments {
    pub lab: TestNs,
    pub router: TestNs,
}

impl Segments {
    /// The lab and router namespaces, tagged `lab_tag` and `router_tag`.
    pub fn new(lab_tag: &str, router_tag: &str) -> Segments {
        let lab = TestNs::new(lab_tag);
        let router = TestNs::new(router_tag);
        for (br, gw4, gw6) in
            [("brA", "198.51.100.1/24", "2001:db8:a::1/64"), ("brB", "203.0.113.1/25", "2001:db8:b::1/64")]
        {
            lab.exec_ok(&["ip", "link", "add", br, "type", "bridge"]);
            lab.exec_ok(&["ip", "link", "set", br, "up"]);
            let (a, b) = (format!("r-{br}"), format!("{br}-r"));
            veth(&router, &a, &lab, &b);
            lab.exec_ok(&["ip", "link", "set", &b, "master", br, "up"]);
            router.exec_ok(&["ip", "link", "set", &a, "up"]);
            router.exec_ok(&["ip", "addr", "add", gw4, "dev", &a]);
            router.exec_ok(&["ip", "addr", "add", gw6, "dev", &a, "nodad"]);
        }
        router.enable_forwarding();
        Segments { lab, router }
    }

    /// Plugs `ns` into bridge `br` (`brA` or `brB`): its `ifname`, whose
    /// peer in the lab is `port`. The interface is left down.
    pub fn plug(&self, ns: &TestNs, ifname: &str, br: &str, port: &str) {
        veth(ns, ifname, &self.lab, port);
        self.lab.exec_ok(&["ip", "link", "set", port, "master", br, "up"]);
    }

    /// etcd and kube-apiserver in a namespace tagged `tag` at [`CP_IP`] on
    /// segment A (segment B through the router); `apiserver_flags` are
    /// added to kube-apiserver's.
    pub fn control_plane(&self, tag: &str, bin: &Path, apiserver_flags: &[&str]) -> ControlPlane {
        let ns = TestNs::new(tag);
        self.plug(&ns, "eth0", "brA", "brA-cp");
        ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        ns.exec_ok(&["ip", "addr", "add", &format!("{CP_IP}/24"), "dev", "eth0"]);
        ns.exec_ok(&["ip", "route", "add", "203.0.113.0/25", "via", "198.51.100.1"]);
        ControlPlane::start_with_flags(ns, CP_IP, bin, apiserver_flags)
    }
}

/// Segment A or B of the underlay.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Segment {
    A,
    B,
}

/// A node's addresses on its segment, and the router's there.
pub struct NodeUnderlay {
    pub v4: String,
    pub v6: String,
    pub gw4: &'static str,
    pub gw6: &'static str,
}

impl Segments {
    /// Wires `ns` as host `host` of `segment` on its `eth0` (bridge port
    /// `port` in the lab): both addresses, the link up (at `mtu` if given),
    /// only the other segment routed via the router (no default route:
    /// nothing leaves the lab), forwarding on.
    pub fn attach_node(&self, ns: &TestNs, segment: Segment, host: u8, port: &str, mtu: Option<u32>) -> NodeUnderlay {
        let (v4, v6, plen4, br, gw4, gw6, other4, other6) = match segment {
            Segment::A => (
                format!("198.51.100.{host}"),
                format!("2001:db8:a::{host}"),
                24,
                "brA",
                "198.51.100.1",
                "2001:db8:a::1",
                "203.0.113.0/25",
                "2001:db8:b::/64",
            ),
            Segment::B => (
                format!("203.0.113.{host}"),
                format!("2001:db8:b::{host}"),
                25,
                "brB",
                "203.0.113.1",
                "2001:db8:b::1",
                "198.51.100.0/24",
                "2001:db8:a::/64",
            ),
        };
        self.plug(ns, "eth0", br, port);
        match mtu {
            Some(mtu) => ns.exec_ok(&["ip", "link", "set", "eth0", "mtu", &mtu.to_string(), "up"]),
            None => ns.exec_ok(&["ip", "link", "set", "eth0", "up"]),
        };
        ns.exec_ok(&["ip", "addr", "add", &format!("{v4}/{plen4}"), "dev", "eth0"]);
        ns.exec_ok(&["ip", "addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
        ns.exec_ok(&["ip", "route", "add", other4, "via", gw4]);
        ns.exec_ok(&["ip", "-6", "route", "add", other6, "via", gw6]);
        ns.enable_forwarding();
        NodeUnderlay { v4, v6, gw4, gw6 }
    }
}

/// A veth pair: `a_name` in `a`, `b_name` in `b`.
pub fn veth(a: &TestNs, a_name: &str, b: &TestNs, b_name: &str) {
    a.exec_ok(&["ip", "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b.name()]);
}
