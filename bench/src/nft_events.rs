//! An nftables change listener: a NETLINK_NETFILTER socket in a network
//! namespace, joined to the nf_tables multicast group, decoding just enough
//! of each notification to say which table, set (or rule) and element key
//! changed. The kernel sends a transaction's notifications together when it
//! commits, ending with a NEWGEN message; the listener hands over one
//! [`Transaction`] per NEWGEN, stamped with the arrival of its first
//! message, so a large transaction's stamp is its commit time, not the
//! time the reader got through it.
//!
//! This is what `nft monitor` reads, without a process that formats every
//! element as text while competing with the agent for CPU.

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::Instant;

use libweft::netns::NetNs;

const NETLINK_NETFILTER: isize = 12;
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
// enum nf_tables_msg_types
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
// Attributes: NFTA_TABLE_NAME, NFTA_RULE_TABLE, NFTA_SET_ELEM_LIST_TABLE are
// all 1; NFTA_SET_ELEM_LIST_SET 2, NFTA_SET_ELEM_LIST_ELEMENTS 3;
// NFTA_LIST_ELEM 1; NFTA_SET_ELEM_KEY 1, NFTA_SET_ELEM_FLAGS 3;
// NFTA_DATA_VALUE 1; NFT_SET_ELEM_INTERVAL_END 1.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One change in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A table created.
    NewTable(String),
    /// A table deleted.
    DelTable(String),
    /// A chain deleted: its table and name.
    DelChain { table: String, name: String },
    /// A rule added: its table and its whole message, in which its comment
    /// (user data) can be found.
    NewRule { table: String, raw: Vec<u8> },
    /// A set or map element added (`true`) or deleted: table, set, key
    /// bytes. Interval ends are left out.
    Elem { added: bool, table: String, set: String, key: Vec<u8> },
}

/// The changes one commit made, and when its first notification arrived.
#[derive(Debug)]
pub struct Transaction {
    pub at: Instant,
    pub changes: Vec<Change>,
    /// The socket overflowed while this transaction arrived: changes are missing.
    pub lossy: bool,
}

/// Starts the listener in `ns`; transactions arrive on the receiver.
pub fn listen(ns: &NetNs) -> std::io::Result<mpsc::Receiver<Transaction>> {
    let socket = subscribe(ns)?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut current: Option<Transaction> = None;
        loop {
            let n = match socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    current
                        .get_or_insert_with(|| Transaction { at: Instant::now(), changes: vec![], lossy: false })
                        .lossy = true;
                    continue;
                }
                Err(_) => return,
            };
            let at = Instant::now();
            let mut off = 0;
            while off + 20 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
                if len < 20 || off + len > n {
                    break;
                }
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let msg = &buf[off..off + len];
                off += (len + 3) & !3;
                if ty >> 8 != NFNL_SUBSYS_NFTABLES {
                    continue;
                }
                let t = current.get_or_insert_with(|| Transaction { at, changes: vec![], lossy: false });
                if ty & 0xff != NFT_MSG_NEWGEN {
                    t.changes.extend(changes(ty & 0xff, msg));
                    continue;
                }
                // The commit: the transaction is complete.
                if let Some(t) = current.take()
                    && tx.send(t).is_err()
                {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// The changes one nftables message (type `ty`) announces.
fn changes(ty: u16, msg: &[u8]) -> Vec<Change> {
    // nlmsghdr (16) + nfgenmsg (4), then attributes.
    let attrs = &msg[20..];
    match ty {
        NFT_MSG_NEWTABLE => vec![Change::NewTable(string_attr(attrs, 1))],
        NFT_MSG_DELTABLE => vec![Change::DelTable(string_attr(attrs, 1))],
        NFT_MSG_DELCHAIN => vec![Change::DelChain { table: string_attr(attrs, 1), name: string_attr(attrs, 3) }],
        NFT_MSG_NEWRULE => vec![Change::NewRule { table: string_attr(attrs, 1), raw: msg.to_vec() }],
        NFT_MSG_NEWSETELEM | NFT_MSG_DELSETELEM => elements(attrs, ty == NFT_MSG_NEWSETELEM),
        _ => vec![],
    }
}

/// The elements a set-element message adds or deletes; the ends of
/// intervals are left out.
fn elements(attrs: &[u8], added: bool) -> Vec<Change> {
    let (table, set) = (string_attr(attrs, 1), string_attr(attrs, 2));
    let mut out = Vec::new();
    for (_, list) in nla(attrs).filter(|(ty, _)| *ty == 3) {
        for (_, elem) in nla(list) {
            let mut key = None;
            let mut interval_end = false;
            for (ty, v) in nla(elem) {
                match ty {
                    1 => key = nla(v).find(|(t, _)| *t == 1).map(|(_, k)| k.to_vec()),
                    3 => interval_end = v.get(3).is_some_and(|f| f & 1 != 0),
                    _ => {}
                }
            }
            if let Some(key) = key.filter(|_| !interval_end) {
                out.push(Change::Elem { added, table: table.clone(), set: set.clone(), key });
            }
        }
    }
    out
}

/// A netlink socket in `ns` on the nftables multicast group, with room
/// for a whole-table rewrite.
fn subscribe(ns: &NetNs) -> std::io::Result<netlink_sys::Socket> {
    let mut socket =
        ns.run(|| netlink_sys::Socket::new(NETLINK_NETFILTER)).map_err(|e| std::io::Error::other(e.to_string()))??;
    socket.bind(&netlink_sys::SocketAddr::new(0, 0))?;
    socket.add_membership(NFNLGRP_NFTABLES)?;
    // A whole-table rewrite notifies every element: 512 MiB of room, which
    // costs only what is queued (as root, past net.core.rmem_max).
    let size: libc::c_int = 512 << 20;
    // SAFETY: a valid socket and a c_int option of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::from_ref(&size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

/// The netlink attributes in `b`: (type without flags, payload).
fn nla(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((ty, payload))
    })
}

fn string_attr(attrs: &[u8], ty: u16) -> String {
    nla(attrs)
        .find(|(t, _)| *t == ty)
        .map(|(_, v)| String::from_utf8_lossy(v.split(|c| *c == 0).next().unwrap_or_default()).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn attributes_are_walked_with_padding_and_nested_flags_masked() {
        let nested = attr(1 | 0x8000, &attr(1, &[10, 0, 0, 2]));
        let b = [attr(1, b"weft-policy\0"), attr(2, b"ingress4\0"), nested].concat();
        assert_eq!(string_attr(&b, 1), "weft-policy");
        assert_eq!(string_attr(&b, 2), "ingress4");
        let (ty, key) = nla(&b).nth(2).unwrap();
        assert_eq!(ty, 1);
        assert_eq!(nla(key).next().unwrap().1, &[10, 0, 0, 2]);
        // Truncated input ends the walk instead of panicking.
        assert_eq!(nla(&b[..b.len() - 3]).count(), 2);
    }
}
