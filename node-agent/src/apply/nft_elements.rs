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
//! Only the element forms that [`crate::apply::policy::element_changes`]
//! and [`crate::apply::nftables::set_changes`] emit for sets without
//! intervals are encoded: a single address, an
//! `address . port` concatenation, and `address : jump chain` for verdict
//! maps. Anything else is [`Unsupported`], and the caller uses `nft`.

use std::net::IpAddr;
use std::sync::Mutex;

use netlink_sys::{Socket, protocols};
use serde_json::Value;

use crate::observe::events::NftWriters;

// linux/netfilter/nfnetlink.h and nf_tables.h.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;
const NFPROTO_INET: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;

/// A command `nft` must write instead.
#[derive(Debug, thiserror::Error)]
#[error("not an element change weft writes over netlink: {0}")]
pub struct Unsupported(String);

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

/// One element command, encoded.
#[derive(Debug)]
pub struct Encoded {
    messages: Vec<Vec<u8>>,
    text: Vec<String>,
}

/// Encodes `{"add"|"delete": {"element": {"family": "inet", "table", "name", "elem": [...]}}}`
/// commands into nfnetlink messages.
pub fn encode(cmds: &[Value]) -> Result<Encoded, Unsupported> {
    let mut out = Encoded { messages: Vec::with_capacity(cmds.len()), text: Vec::with_capacity(cmds.len()) };
    for cmd in cmds {
        let bad = || Unsupported(cmd.to_string());
        let (kind, body) = match (cmd.get("add"), cmd.get("delete")) {
            (Some(b), None) => (NFT_MSG_NEWSETELEM, b),
            (None, Some(b)) => (NFT_MSG_DELSETELEM, b),
            _ => return Err(bad()),
        };
        let e = body.get("element").ok_or_else(bad)?;
        if e.get("family").and_then(Value::as_str) != Some("inet") {
            return Err(bad());
        }
        let table = e.get("table").and_then(Value::as_str).ok_or_else(bad)?;
        let set = e.get("name").and_then(Value::as_str).ok_or_else(bad)?;
        let elems = e.get("elem").and_then(Value::as_array).ok_or_else(bad)?;
        let mut list = Vec::new();
        for elem in elems {
            let (key, jump) = element(elem).ok_or_else(bad)?;
            let mut one = nested(NFTA_SET_ELEM_KEY, &attr(NFTA_DATA_VALUE, &key));
            if let Some(chain) = jump {
                let mut verdict = attr(NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
                verdict.extend(attr(NFTA_VERDICT_CHAIN, &cstr(chain)));
                one.extend(nested(NFTA_SET_ELEM_DATA, &nested(NFTA_DATA_VERDICT, &verdict)));
            }
            list.extend(nested(NFTA_LIST_ELEM, &one));
        }
        let mut payload = attr(NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
        payload.extend(attr(NFTA_SET_ELEM_LIST_SET, &cstr(set)));
        payload.extend(nested(NFTA_SET_ELEM_LIST_ELEMENTS, &list));
        // As `nft add element`: an element already there is no error.
        let create = if kind == NFT_MSG_NEWSETELEM { NLM_F_CREATE } else { 0 };
        out.messages.push(message(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | NLM_F_ACK | create,
            NFPROTO_INET,
            0,
            &payload,
        ));
        out.text.push(cmd.to_string().chars().take(200).collect());
    }
    Ok(out)
}

/// The key (and the verdict map's jump target) of one element as
/// `element_changes` writes it; `None` for any other form.
fn element(elem: &Value) -> Option<(Vec<u8>, Option<&str>)> {
    let ip = |v: &Value| v.as_str()?.parse::<IpAddr>().ok();
    if let Some(addr) = ip(elem) {
        return Some((addr_bytes(addr), None));
    }
    if let Some([key, data]) = elem.as_array().map(Vec::as_slice) {
        let chain = data.get("jump")?.get("target")?.as_str()?;
        return Some((addr_bytes(ip(key)?), Some(chain)));
    }
    if let Some([addr, port]) = elem.get("concat").and_then(Value::as_array).map(Vec::as_slice) {
        let port = u16::try_from(port.as_u64()?).ok()?;
        // Each part of a concatenation takes whole 32-bit registers.
        let mut key = addr_bytes(ip(addr)?);
        key.extend(port.to_be_bytes());
        key.extend([0, 0]);
        return Some((key, None));
    }
    None
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    b
}

fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut a = Vec::with_capacity(len.next_multiple_of(4));
    a.extend((len as u16).to_ne_bytes());
    a.extend(kind.to_ne_bytes());
    a.extend(value);
    a.resize(len.next_multiple_of(4), 0);
    a
}

fn nested(kind: u16, inner: &[u8]) -> Vec<u8> {
    attr(kind | NLA_F_NESTED, inner)
}

/// nlmsghdr + nfgenmsg + payload; the sequence number is set when sent.
fn message(kind: u16, flags: u16, family: u8, res_id: u16, payload: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + payload.len();
    let mut m = Vec::with_capacity(len);
    m.extend((len as u32).to_ne_bytes());
    m.extend(kind.to_ne_bytes());
    m.extend(flags.to_ne_bytes());
    m.extend([0u8; 8]);
    m.extend([family, 0]);
    m.extend(res_id.to_be_bytes());
    m.extend(payload);
    m
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
}

static CHANNEL: Mutex<Option<Channel>> = Mutex::new(None);

impl Channel {
    fn open() -> std::io::Result<Channel> {
        let mut socket = Socket::new(protocols::NETLINK_NETFILTER)?;
        let port = socket.bind_auto()?.port_number();
        set_receive_timeout(&socket, std::time::Duration::from_secs(10))?;
        Ok(Channel { socket, port, seq: 0 })
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
    let socket = &channel.socket;
    socket.send(&buf, 0)?;
    // One answer per element message (the sequence numbers after the
    // batch's begin), sent once the whole batch is processed; an error in
    // any aborts them all.
    let mut answered = 0;
    let mut first_error = None;
    while answered < batch.messages.len() {
        let (reply, _) = socket.recv_from_full()?;
        for msg in crate::observe::events::split(&reply) {
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

fn set_receive_timeout(socket: &Socket, t: std::time::Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval { tv_sec: t.as_secs() as libc::time_t, tv_usec: 0 };
    // SAFETY: setsockopt on a socket this function owns, with a timeval
    // whose size is the length given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn element_forms_become_keys_and_verdicts() {
        let single = json!("10.244.1.5");
        assert_eq!(element(&single).unwrap(), (vec![10, 244, 1, 5], None));
        let verdict = json!(["fd00::1", {"jump": {"target": "in-abc"}}]);
        let (k, j) = element(&verdict).unwrap();
        assert_eq!(k.len(), 16);
        assert_eq!(j, Some("in-abc"));
        let (k, _) = element(&json!({"concat": ["10.0.0.1", 8080]})).unwrap();
        assert_eq!(k, vec![10, 0, 0, 1, 0x1f, 0x90, 0, 0], "the port padded to a register");
        let (k, _) = element(&json!({"concat": ["fd00::1", 53]})).unwrap();
        assert_eq!(k.len(), 20);
        // Ranges (interval sets) and anything else go through nft.
        assert!(element(&json!({"range": ["10.0.0.0", "10.0.0.255"]})).is_none());
        assert!(element(&json!({"concat": ["10.0.0.1", 70000]})).is_none());
        assert!(element(&json!("not-an-address")).is_none());
        let range = json!({"add": {"element": {"family": "inet", "table": "t", "name": "s",
            "elem": [{"range": ["10.0.0.0", "10.0.0.255"]}]}}});
        assert!(encode(&[range]).is_err());
        let ip_family = json!({"add": {"element": {"family": "ip", "table": "t", "name": "s", "elem": ["10.0.0.1"]}}});
        assert!(encode(&[ip_family]).is_err());
    }

    #[test]
    fn an_element_message_is_well_formed() {
        let cmd = json!({"delete": {"element": {"family": "inet", "table": "weft-policy", "name": "ingress4",
            "elem": [["10.244.1.5", {"jump": {"target": "in-x"}}]]}}});
        let e = encode(&[cmd]).unwrap();
        let m = &e.messages[0];
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize, m.len());
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), (10 << 8) | NFT_MSG_DELSETELEM);
        assert_eq!(m[16], NFPROTO_INET);
        // Attributes are 4-byte aligned and end exactly at the message's end.
        let mut rest = &m[20..];
        let mut kinds = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
            kinds.push(u16::from_ne_bytes([rest[2], rest[3]]) & !NLA_F_NESTED);
            rest = &rest[len.next_multiple_of(4)..];
        }
        assert_eq!(kinds, [NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS]);
    }
}
