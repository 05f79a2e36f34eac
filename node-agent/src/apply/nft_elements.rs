//! Set and map element changes of weft's tables (`inet weft-policy`, and
//! the node sets of `inet weft`) written over nfnetlink directly, as one
//! batch (one transaction), instead of through `nft`.
//!
//! Why not `nft`: before it adds one element, `nft` loads the table's
//! sets, chains and the elements of every interval set to check overlaps
//! (0.07–0.12 s per write measured at 10,000 pods and 1,000 policies,
//! plus a process start); the kernel needs none of that for a hash set or
//! a verdict map. No maintained crate writes nftables elements without
//! libnftnl or GPL code (`rustables` is GPL-3.0 and needs libclang), and
//! the messages are a few nested attributes, so they are built here.
//!
//! It writes the element changes of an [`NftPlan`] as they are typed, in
//! the forms weft's sets without intervals use: a single address, an
//! `address . port` concatenation, and `address : jump chain` for verdict
//! maps. An interval is [`Unsupported`], and the caller uses `nft`.
//!
//! One change may hold tens of thousands of elements, and a netlink
//! attribute's length is 16 bits: each change is cut into messages whose
//! element list stays under [`MAX_LIST_BYTES`], all in the one batch, so
//! the kernel still commits all or nothing.
//!
//! [`NftPlan`]: crate::desired::nft_plan::NftPlan

use std::net::IpAddr;
use std::sync::Mutex;

use netlink_sys::{Socket, protocols};

use crate::base::netfilter::{
    NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFT_JUMP, NFT_MSG_DELSETELEM,
    NFT_MSG_NEWSETELEM, NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_LIST_ELEM, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, NFTA_VERDICT_CHAIN,
    NFTA_VERDICT_CODE, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NLMSG_ERROR, NftWriters, SocketBuffer, attr, cstr,
    force_buffer, message, nested, set_receive_timeout, split,
};
use crate::desired::nft_plan::{Element, ElementChange, NftPlan, Verb};

/// The most bytes of elements in one message: the list is one attribute,
/// whose length the kernel reads as 16 bits (a list past 64 KiB wrapped
/// and was refused, or worse, read short). Half of that leaves room for
/// the attribute headers around it.
pub const MAX_LIST_BYTES: usize = 32 * 1024;

/// An element change `nft` must write instead.
#[derive(Debug, thiserror::Error)]
#[error("not an element change weft writes over netlink: {verb} element inet {table} {set} {element:?}")]
pub struct Unsupported {
    verb: &'static str,
    table: &'static str,
    set: String,
    element: Element,
}

/// A failed element batch.
#[derive(Debug, thiserror::Error)]
pub enum ElementsError {
    #[error("nftables netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// The blocking task writing the batch panicked or was cancelled.
    #[error("nftables element task: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The kernel refused the batch (nothing of it was applied).
    #[error("kernel refused element change {index} ({command}): {source}")]
    Refused { index: usize, command: String, source: std::io::Error },
}

/// Element changes, encoded: one or more messages each.
#[derive(Debug)]
pub struct Encoded {
    messages: Vec<Vec<u8>>,
    /// What each message does, for errors.
    text: Vec<String>,
}

impl Encoded {
    /// The number of messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// Encodes element changes into nfnetlink messages, each element list cut
/// at [`MAX_LIST_BYTES`].
pub fn encode<'a>(changes: impl IntoIterator<Item = &'a ElementChange>) -> Result<Encoded, Unsupported> {
    let mut out = Encoded { messages: Vec::new(), text: Vec::new() };
    for change in changes {
        let (kind, create) = match change.verb {
            // As `nft add element`: an element already there is no error.
            Verb::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE),
            Verb::Delete => (NFT_MSG_DELSETELEM, 0),
        };
        let mut lists = vec![Vec::new()];
        for element in &change.elements {
            let one = encode_element(element).ok_or_else(|| Unsupported {
                verb: change.verb.as_str(),
                table: change.table,
                set: change.set.clone(),
                element: element.clone(),
            })?;
            let list = lists.last_mut().expect("one list at least");
            if !list.is_empty() && list.len() + one.len() > MAX_LIST_BYTES {
                lists.push(one);
            } else {
                list.extend(one);
            }
        }
        let parts = lists.len();
        for (part, list) in lists.into_iter().enumerate() {
            let mut payload = attr(NFTA_SET_ELEM_LIST_TABLE, &cstr(change.table));
            payload.extend(attr(NFTA_SET_ELEM_LIST_SET, &cstr(&change.set)));
            payload.extend(nested(NFTA_SET_ELEM_LIST_ELEMENTS, &list));
            out.messages.push(message(
                (NFNL_SUBSYS_NFTABLES << 8) | kind,
                NLM_F_REQUEST | NLM_F_ACK | create,
                NFPROTO_INET,
                0,
                &payload,
            ));
            out.text.push(format!(
                "{} element inet {} {}, {} elements, part {} of {parts}",
                change.verb.as_str(),
                change.table,
                change.set,
                change.elements.len(),
                part + 1
            ));
        }
    }
    Ok(out)
}

/// The plan encoded, or `None` when `nft` must write it: it holds more
/// than element changes, or an element form the encoder does not write.
pub fn encode_plan(plan: &NftPlan) -> Option<Encoded> {
    let changes = plan.element_changes()?;
    encode(changes).map_err(|e| tracing::debug!("{e}: written by nft")).ok()
}

/// One `NFTA_LIST_ELEM`: the key (and the verdict map's jump); `None` for
/// an interval, which needs the set's interval flags nft knows about.
fn encode_element(element: &Element) -> Option<Vec<u8>> {
    let (key, jump) = match element {
        Element::Addr(ip) => (addr_bytes(*ip), None),
        Element::AddrPort(ip, port) => {
            // Each part of a concatenation takes whole 32-bit registers.
            let mut key = addr_bytes(*ip);
            key.extend(port.to_be_bytes());
            key.extend([0, 0]);
            (key, None)
        }
        Element::Jump(ip, chain) => (addr_bytes(*ip), Some(chain.as_str())),
        Element::Range(..) => return None,
    };
    let mut one = nested(NFTA_SET_ELEM_KEY, &attr(NFTA_DATA_VALUE, &key));
    if let Some(chain) = jump {
        let mut verdict = attr(NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
        verdict.extend(attr(NFTA_VERDICT_CHAIN, &cstr(chain)));
        one.extend(nested(NFTA_SET_ELEM_DATA, &nested(NFTA_DATA_VERDICT, &verdict)));
    }
    Some(nested(NFTA_LIST_ELEM, &one))
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The socket element batches go through, kept open for the agent's life:
/// the kernel waits out an RCU grace period (about 10 ms here) when an
/// nfnetlink socket closes after a transaction that deleted anything
/// (`nf_tables_trans_destroy_flush_work` on NETLINK_URELEASE), so a socket
/// per batch made every Node deletion cost that much. Its sequence number
/// goes on across batches, so an answer to an earlier batch is never taken
/// for one to this. It belongs to the network namespace it was opened in:
/// the agent's, which never changes.
struct Channel {
    socket: Socket,
    port: u32,
    seq: u32,
    /// The send buffer set so far: a batch past it fails whole (EMSGSIZE).
    send_buffer: usize,
}

/// Batches up to this size go without asking for a larger send buffer:
/// well below the kernel's default (`net.core.wmem_default`, 208 KiB).
const DEFAULT_SEND_BUFFER: usize = 64 * 1024;

static CHANNEL: Mutex<Option<Channel>> = Mutex::new(None);

impl Channel {
    fn open() -> std::io::Result<Channel> {
        let mut socket = Socket::new(protocols::NETLINK_NETFILTER)?;
        let port = socket.bind_auto()?.port_number();
        set_receive_timeout(&socket, std::time::Duration::from_secs(10))?;
        Ok(Channel { socket, port, seq: 0, send_buffer: DEFAULT_SEND_BUFFER })
    }
}

/// [`apply`] on a blocking thread, for the agent's async passes.
pub async fn write(batch: Encoded, writers: Option<std::sync::Arc<NftWriters>>) -> Result<(), ElementsError> {
    tokio::task::spawn_blocking(move || apply(&batch, writers.as_deref())).await.map_err(ElementsError::Task)?
}

/// Sends the commands as one batch, with the socket registered in `writers`
/// so that its notifications are known as weft's own, and waits for the
/// kernel's answer to each. The kernel commits all or nothing. After an
/// error on the socket itself it is closed; the next batch opens another.
pub fn apply(batch: &Encoded, writers: Option<&NftWriters>) -> Result<(), ElementsError> {
    let mut guard = CHANNEL.lock().unwrap_or_else(|p| p.into_inner());
    let channel = match guard.as_mut() {
        Some(c) => c,
        None => guard.insert(Channel::open()?),
    };
    if let Some(w) = writers
        && !w.contains(channel.port)
    {
        w.push(channel.port);
    }
    let result = send_batch(channel, batch);
    if matches!(result, Err(ElementsError::Io(_))) {
        // Answers may still be queued on it: start afresh.
        *guard = None;
    }
    result
}

fn send_batch(channel: &mut Channel, batch: &Encoded) -> Result<(), ElementsError> {
    let mut buf = Vec::new();
    let first = channel.seq.wrapping_add(1);
    let mut push = |buf: &mut Vec<u8>, msg: &[u8]| {
        channel.seq = channel.seq.wrapping_add(1);
        let start = buf.len();
        buf.extend(msg);
        buf[start + 8..start + 12].copy_from_slice(&channel.seq.to_ne_bytes());
    };
    let begin = message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES, &[]);
    push(&mut buf, &begin);
    for m in &batch.messages {
        push(&mut buf, m);
    }
    let end = message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES, &[]);
    push(&mut buf, &end);
    if buf.len() > channel.send_buffer {
        // Room for the whole batch, as nft makes for its own: one
        // transaction of 10,000 IPv6 elements is some 300 KB.
        force_buffer(&channel.socket, SocketBuffer::Send, buf.len())?;
        channel.send_buffer = buf.len();
    }
    let socket = &channel.socket;
    socket.send(&buf, 0)?;
    // One answer per element message (the sequence numbers after the
    // batch's begin), sent once the whole batch is processed; an error in
    // any aborts them all.
    let mut answered = 0;
    let mut first_error = None;
    while answered < batch.messages.len() {
        let (reply, _) = socket.recv_from_full()?;
        for msg in split(&reply) {
            if msg.len() < 20 || u16::from_ne_bytes([msg[4], msg[5]]) != NLMSG_ERROR {
                continue;
            }
            let seq = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
            let offset = seq.wrapping_sub(first) as usize;
            if offset > batch.messages.len() + 1 {
                // An answer to an earlier batch: not this one's.
                continue;
            }
            let code = i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]]);
            let index = offset.wrapping_sub(1);
            if code != 0 && index >= batch.messages.len() {
                // The batch itself was refused: no other answer comes.
                let source = std::io::Error::from_raw_os_error(-code);
                return Err(ElementsError::Refused { index, command: "the batch".into(), source });
            }
            answered += 1;
            if code != 0 && first_error.is_none() {
                first_error = Some(ElementsError::Refused {
                    index,
                    command: batch.text.get(index).cloned().unwrap_or_default(),
                    source: std::io::Error::from_raw_os_error(-code),
                });
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::netfilter::NLA_F_NESTED;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn change(verb: Verb, set: &str, elements: Vec<Element>) -> ElementChange {
        ElementChange { verb, table: "weft-policy", set: set.into(), elements }
    }

    /// The attributes of one message: (kind, value) after the nfgenmsg.
    fn attributes(m: &[u8]) -> Vec<(u16, &[u8])> {
        let mut rest = &m[20..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
            out.push((u16::from_ne_bytes([rest[2], rest[3]]) & !NLA_F_NESTED, &rest[4..len]));
            rest = &rest[len.next_multiple_of(4)..];
        }
        out
    }

    #[test]
    fn element_forms_become_keys_and_verdicts() {
        let key_of = |e: Element| {
            let one = encode_element(&e).unwrap();
            // NFTA_LIST_ELEM { NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE key } ... }
            let len = usize::from(u16::from_ne_bytes([one[8], one[9]]));
            one[12..8 + len].to_vec()
        };
        assert_eq!(key_of(Element::Addr(ip("10.244.1.5"))), vec![10, 244, 1, 5]);
        assert_eq!(key_of(Element::Jump(ip("fd00::1"), "in-abc".into())).len(), 16);
        assert_eq!(
            key_of(Element::AddrPort(ip("10.0.0.1"), 8080)),
            vec![10, 0, 0, 1, 0x1f, 0x90, 0, 0],
            "the port padded"
        );
        assert_eq!(key_of(Element::AddrPort(ip("fd00::1"), 53)).len(), 20);
        // Intervals go through nft.
        let range = change(Verb::Add, "peer-x-4", vec![Element::Range(ip("10.0.0.0"), ip("10.0.0.255"))]);
        assert!(encode([&range]).is_err());
    }

    #[test]
    fn an_element_message_is_well_formed() {
        let c = change(Verb::Delete, "ingress4", vec![Element::Jump(ip("10.244.1.5"), "in-x".into())]);
        let e = encode([&c]).unwrap();
        let m = &e.messages[0];
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize, m.len());
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), (10 << 8) | NFT_MSG_DELSETELEM);
        assert_eq!(m[16], NFPROTO_INET);
        let kinds: Vec<u16> = attributes(m).iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS]);
    }

    #[test]
    fn a_large_change_is_cut_into_messages_whose_lists_fit_16_bits() {
        let many: Vec<Element> =
            (0..10_000u32).map(|i| Element::Addr(IpAddr::V6((0xfd00_u128 << 112 | u128::from(i)).into()))).collect();
        let c = change(Verb::Add, "nodes6", many);
        let e = encode([&c]).unwrap();
        assert!(e.len() > 4, "10,000 IPv6 elements are some 280 KB: {} messages", e.len());
        let mut elements = 0;
        for m in &e.messages {
            let attrs = attributes(m);
            let (kind, list) = attrs[2];
            assert_eq!(kind, NFTA_SET_ELEM_LIST_ELEMENTS);
            assert!(list.len() + 4 <= MAX_LIST_BYTES + 64 && list.len() < usize::from(u16::MAX));
            // Each element: NFTA_LIST_ELEM (4) { KEY (4) { VALUE (4 + 16) } }.
            elements += list.len() / 28;
        }
        assert_eq!(elements, 10_000, "every element in some message");
        assert!(e.text[0].contains("part 1 of"), "{}", e.text[0]);
    }
}
