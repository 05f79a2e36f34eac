//! One typed plan of changes to weft's nftables tables (`inet weft` and
//! `inet weft-policy`), between the state weft last wrote and the state
//! it wants: element changes to sets and verdict maps, and the chains,
//! sets, rules and counters added or removed around them. The diffs that
//! make it live with each table ([`weft_table::set_changes`],
//! [`policy_table::element_changes`], [`policy_table::rule_changes`]);
//! both writers consume it: `nft` through [`NftPlan::to_json`], and the
//! nfnetlink element writer (`apply::nft_elements`) straight from the
//! typed elements.
//!
//! [`weft_table::set_changes`]: super::weft_table::set_changes
//! [`policy_table::element_changes`]: super::policy_table::element_changes
//! [`policy_table::rule_changes`]: super::policy_table::rule_changes

use std::io::Write;
use std::net::IpAddr;

use serde_json::{Value, json};

/// Adding or deleting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Delete,
}

impl Verb {
    /// nft's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "add",
            Verb::Delete => "delete",
        }
    }
}

/// One element of a set or map, in the forms weft's tables use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Element {
    /// An address (also a one-address range of an interval set).
    Addr(IpAddr),
    /// `addr . port`: a named-port set element.
    AddrPort(IpAddr, u16),
    /// `first-last`, first < last: a peer address set's interval.
    Range(IpAddr, IpAddr),
    /// `addr : jump chain`: a verdict map element.
    Jump(IpAddr, String),
}

impl Element {
    /// A range of an interval set: a single address when `first == last`,
    /// as nft lists it.
    pub fn range(first: IpAddr, last: IpAddr) -> Element {
        if first == last { Element::Addr(first) } else { Element::Range(first, last) }
    }

    /// Its nft JSON form.
    pub fn to_json(&self) -> Value {
        match self {
            Element::Addr(ip) => json!(ip.to_string()),
            Element::AddrPort(ip, port) => json!({"concat": [ip.to_string(), port]}),
            Element::Range(a, b) => json!({"range": [a.to_string(), b.to_string()]}),
            Element::Jump(ip, chain) => json!([ip.to_string(), {"jump": {"target": chain}}]),
        }
    }
}

/// Elements added to or deleted from one set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementChange {
    pub verb: Verb,
    /// The `inet` table.
    pub table: &'static str,
    /// The set or map.
    pub set: String,
    pub elements: Vec<Element>,
}

impl ElementChange {
    /// Its nft JSON command.
    pub fn to_json(&self) -> Value {
        let elem: Vec<Value> = self.elements.iter().map(Element::to_json).collect();
        json!({self.verb.as_str(): {"element": {"family": "inet", "table": self.table, "name": self.set, "elem": elem}}})
    }
}

/// One command of a plan.
#[derive(Debug, Clone, PartialEq)]
pub enum NftCommand {
    /// Element changes: the nfnetlink writer takes these.
    Elements(ElementChange),
    /// A chain, set, map, counter or rule added, flushed or deleted, as an
    /// nft JSON command: only `nft` writes these.
    Object(Value),
}

impl NftCommand {
    pub fn to_json(&self) -> Value {
        match self {
            NftCommand::Elements(e) => e.to_json(),
            NftCommand::Object(v) => v.clone(),
        }
    }
}

/// The commands of one transaction, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NftPlan {
    pub commands: Vec<NftCommand>,
}

impl NftPlan {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Appends an element change, unless it has no elements.
    pub fn elements(&mut self, verb: Verb, table: &'static str, set: String, elements: Vec<Element>) {
        if !elements.is_empty() {
            self.commands.push(NftCommand::Elements(ElementChange { verb, table, set, elements }));
        }
    }

    /// Appends an nft JSON command.
    pub fn object(&mut self, command: Value) {
        self.commands.push(NftCommand::Object(command));
    }

    /// The element changes, if the plan holds nothing else.
    pub fn element_changes(&self) -> Option<Vec<&ElementChange>> {
        self.commands
            .iter()
            .map(|c| match c {
                NftCommand::Elements(e) => Some(e),
                NftCommand::Object(_) => None,
            })
            .collect()
    }

    /// The commands as nft JSON, `{"nftables": [...]}`.
    pub fn to_json(&self) -> Value {
        json!({"nftables": self.commands.iter().map(NftCommand::to_json).collect::<Vec<_>>()})
    }
}

/// Elements per `add element` command of a whole-table write.
pub const ELEMENTS_PER_COMMAND: usize = 1000;

/// Adds `elem` to set or map `name` of `inet <table>`, in commands of at
/// most [`ELEMENTS_PER_COMMAND`]: as `Value`s a named-port element is a
/// map of its own, and 10,000 of them in one command raised the agent's
/// peak RSS by 14 MiB.
pub fn add_elements(table: &str, name: &str, elem: impl Iterator<Item = Value>, out: &mut impl FnMut(Value)) {
    let mut elem = elem.peekable();
    while elem.peek().is_some() {
        let chunk: Vec<Value> = elem.by_ref().take(ELEMENTS_PER_COMMAND).collect();
        out(json!({"add": {"element": {"family": "inet", "table": table, "name": name, "elem": chunk}}}));
    }
}

/// Writes the commands `commands` passes to its callback to `out` as
/// `nft -j` input text, `{"nftables": [...]}`, one at a time: a whole
/// table as one `Value` tree is several times the size of its text.
pub fn write_commands(
    out: &mut (impl Write + ?Sized),
    commands: impl FnOnce(&mut dyn FnMut(Value)),
) -> std::io::Result<()> {
    out.write_all(b"{\"nftables\":[")?;
    let mut first = true;
    let mut result = Ok(());
    commands(&mut |c| {
        if result.is_err() {
            return;
        }
        if !std::mem::take(&mut first) {
            result = out.write_all(b",");
        }
        if result.is_ok() {
            result = serde_json::to_writer(&mut *out, &c).map_err(std::io::Error::from);
        }
    });
    result?;
    out.write_all(b"]}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_render_as_nft_writes_them() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(Element::range(ip("10.0.0.1"), ip("10.0.0.1")), Element::Addr(ip("10.0.0.1")));
        assert_eq!(
            Element::range(ip("10.0.0.0"), ip("10.0.0.255")).to_json(),
            json!({"range": ["10.0.0.0", "10.0.0.255"]})
        );
        assert_eq!(Element::AddrPort(ip("fd00::1"), 53).to_json(), json!({"concat": ["fd00::1", 53]}));
        assert_eq!(
            Element::Jump(ip("10.0.0.1"), "in-x".into()).to_json(),
            json!(["10.0.0.1", {"jump": {"target": "in-x"}}])
        );
        let mut plan = NftPlan::default();
        plan.elements(Verb::Delete, "weft", "nodes4".into(), vec![]);
        assert!(plan.is_empty(), "an empty element list is no command");
        plan.elements(Verb::Delete, "weft", "nodes4".into(), vec![Element::Addr(ip("10.0.0.1"))]);
        assert_eq!(plan.element_changes().map(|e| e.len()), Some(1));
        assert_eq!(
            plan.to_json(),
            json!({"nftables": [{"delete": {"element": {"family": "inet", "table": "weft", "name": "nodes4", "elem": ["10.0.0.1"]}}}]})
        );
        plan.object(json!({"add": {"chain": {"family": "inet", "table": "weft", "name": "c"}}}));
        assert!(plan.element_changes().is_none(), "a plan with an object is nft's");
    }
}
