//! How weft talks to nftables, below observe and apply: the `nft`
//! process (one invocation, one transaction), the nfnetlink framing of the
//! messages weft reads (notifications) and writes (element batches), the
//! socket options both need, the record of weft's own writers that tells
//! its transactions from anyone else's, and the digest of a table's
//! listing that tells whether a table is as weft left it.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use libweft::netlink::StableHasher;
/// The netlink messages of one datagram (shared with the rtnetlink readers).
pub use libweft::netlink::split;

// linux/netfilter/nfnetlink.h and nf_tables.h.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
pub const NFT_MSG_NEWSETELEM: u16 = 12;
pub const NFT_MSG_DELSETELEM: u16 = 14;
pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub const NFTA_LIST_ELEM: u16 = 1;
pub const NFTA_SET_ELEM_KEY: u16 = 1;
pub const NFTA_SET_ELEM_DATA: u16 = 2;
pub const NFTA_DATA_VALUE: u16 = 1;
pub const NFTA_DATA_VERDICT: u16 = 2;
pub const NFTA_VERDICT_CODE: u16 = 1;
pub const NFTA_VERDICT_CHAIN: u16 = 2;
pub const NFT_JUMP: i32 = -3;
pub const NFPROTO_INET: u8 = 1;
pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLMSG_ERROR: u16 = 2;
/// Every nftables message but NFT_MSG_NEWGEN (the generation that ends
/// each transaction) names its table in attribute 1 (NFTA_TABLE_NAME,
/// NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, …).
pub const NFTA_TABLE: u16 = 1;
pub const NFT_MSG_NEWGEN: u16 = 15;
pub const NLA_TYPE_MASK: u16 = 0x3fff;

/// A NUL-terminated string attribute value.
pub fn cstr(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    b
}

/// One netlink attribute, padded to 4 bytes.
pub fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut a = Vec::with_capacity(len.next_multiple_of(4));
    a.extend((len as u16).to_ne_bytes());
    a.extend(kind.to_ne_bytes());
    a.extend(value);
    a.resize(len.next_multiple_of(4), 0);
    a
}

/// A nested attribute.
pub fn nested(kind: u16, inner: &[u8]) -> Vec<u8> {
    attr(kind | NLA_F_NESTED, inner)
}

/// nlmsghdr + nfgenmsg + payload; the sequence number is set when sent.
pub fn message(kind: u16, flags: u16, family: u8, res_id: u16, payload: &[u8]) -> Vec<u8> {
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

/// Process ids of the `nft` processes weft started lately, and port ids of
/// the netlink sockets it wrote policy elements through: the transactions
/// they commit are weft's own.
#[derive(Debug, Default)]
pub struct NftWriters(Mutex<VecDeque<u32>>);

impl NftWriters {
    /// How many recent writers are remembered: far more than can be in
    /// flight, since the agent runs one `nft` at a time.
    pub const KEEP: usize = 16;

    /// Records a writer before it commits anything.
    pub fn push(&self, pid: u32) {
        let mut pids = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if pids.len() == Self::KEEP {
            pids.pop_front();
        }
        pids.push_back(pid);
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(&pid)
    }
}

/// SO_RCVTIMEO: a blocking receive gives up after `t`.
pub fn set_receive_timeout(socket: &impl AsRawFd, t: std::time::Duration) -> std::io::Result<()> {
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

/// A socket's receive or send buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketBuffer {
    Receive,
    Send,
}

/// SO_RCVBUFFORCE or SO_SNDBUFFORCE: a buffer past `net.core.rmem_max`
/// (`wmem_max`), which CAP_NET_ADMIN may set. The kernel doubles the
/// value for its bookkeeping.
pub fn force_buffer(socket: &impl AsRawFd, which: SocketBuffer, bytes: usize) -> std::io::Result<()> {
    let option = match which {
        SocketBuffer::Receive => libc::SO_RCVBUFFORCE,
        SocketBuffer::Send => libc::SO_SNDBUFFORCE,
    };
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a socket this process owns, with a c_int value
    // whose size is the length given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Runs `nft -j -f -` on `payload`, recording the process in `writers`
/// before it can commit anything, so that its notifications are known as
/// weft's own.
pub fn run_nft(payload: &[u8], writers: Option<&NftWriters>) -> Result<(), nftables::helper::NftablesError> {
    run_nft_writing(|stdin| stdin.write_all(payload), writers)
}

/// Runs `nft -j -f -` on what `write` writes to its input, buffered.
pub fn run_nft_writing(
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    writers: Option<&NftWriters>,
) -> Result<(), nftables::helper::NftablesError> {
    use nftables::helper::NftablesError;
    let program = std::ffi::OsString::from("nft");
    let exec = |inner| NftablesError::NftExecution { program: program.clone(), inner };
    let mut child = Command::new(&program)
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(exec)?;
    if let Some(w) = writers {
        w.push(child.id());
    }
    // nft reads all of its input before it commits.
    let written = child.stdin.take().map(|stdin| {
        let mut stdin = std::io::BufWriter::with_capacity(64 * 1024, stdin);
        write(&mut stdin).and_then(|()| stdin.flush())
    });
    let out = child.wait_with_output().map_err(exec)?;
    if let Some(Err(e)) = written {
        return Err(exec(e));
    }
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        return Err(NftablesError::NftFailed {
            program,
            hint: format!("applying the rule set: {}", stderr.trim()),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        });
    }
    Ok(())
}

/// A digest of `nft -j list table inet <table>`, or `None` when the
/// table is missing (or nft cannot tell). Any change to the table, by weft
/// or anyone else, changes it; rule handles are part of the listing.
/// Counters counting packets are no change (see [`stateless_digest`]).
pub async fn table_digest(table: &'static str) -> Option<u64> {
    let listing = tokio::task::spawn_blocking(move || {
        nftables::helper::get_current_ruleset_raw(
            nftables::helper::DEFAULT_NFT,
            ["list", "table", "inet", table].iter().copied(),
        )
    })
    .await
    .ok()?
    .ok()?;
    Some(stateless_digest(&listing))
}

/// The digest of an `nft -j` listing without the values counters hold.
/// `nft -s` does not help here: in JSON it still prints a named counter's
/// packets and bytes, so every counted drop looked like drift and made the
/// agent replace its table (and restart its counters).
///
/// The listing is hashed as it is parsed, token by token: the policy
/// table's listing is 2.6 MB at 10,000 pods and 1,000 policies, and as a
/// `serde_json::Value` tree it took the agent from 57 to 109 MiB at every
/// resync.
pub fn stateless_digest(listing: &str) -> u64 {
    let mut digest = StableHasher::new();
    let mut de = serde_json::Deserializer::from_str(listing);
    match serde::de::DeserializeSeed::deserialize(Tokens(&mut digest), &mut de).and_then(|()| de.end()) {
        Ok(()) => digest.finish(),
        // Not JSON: digest it as it is (never equal to a parsed one by chance).
        Err(_) => libweft::netlink::stable_hash(listing.bytes()),
    }
}

/// Feeds one JSON value's tokens to the digest, leaving out the values of
/// `packets` and `bytes` keys, and of `timeout` and `expires` (the policy
/// table's liveness gate is renewed with a new timeout, then counts down).
struct Tokens<'a>(&'a mut StableHasher);

impl<'de> serde::de::DeserializeSeed<'de> for Tokens<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Tokens<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.feed(if v { b"t" } else { b"f" });
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.feed(format!("i{v}").as_bytes());
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.feed(format!("u{v}").as_bytes());
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.feed(format!("f{v}").as_bytes());
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        // Length first, so that no two strings (or string sequences) hash alike by concatenation.
        self.0.feed(format!("s{}:", v.len()).as_bytes());
        self.0.feed(v.as_bytes());
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.feed(b"n");
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let d = self.0;
        d.feed(b"[");
        while seq.next_element_seed(Tokens(&mut *d))?.is_some() {}
        d.feed(b"]");
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let d = self.0;
        d.feed(b"{");
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if ["packets", "bytes", "timeout", "expires"].contains(&key.as_ref()) {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            d.feed(format!("k{}:", key.len()).as_bytes());
            d.feed(key.as_bytes());
            map.next_value_seed(Tokens(&mut *d))?;
        }
        d.feed(b"}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counting_packets_does_not_change_the_table_digest_but_a_rule_does() {
        // As `nft -j list table` prints them, before and after a counted drop.
        let table = |packets: u64, verdict: &str| {
            format!(
                r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6", "json_schema_version": 1}}}},
                {{"table": {{"family": "inet", "name": "t", "handle": 1}}}},
                {{"counter": {{"family": "inet", "name": "a", "table": "t", "handle": 2, "packets": {packets}, "bytes": {}}}}},
                {{"rule": {{"family": "inet", "table": "t", "chain": "o", "handle": 3,
                  "expr": [{{"counter": {{"packets": {packets}, "bytes": 0}}}}, {{"counter": "a"}}, {{"{verdict}": null}}]}}}}]}}"#,
                packets * 84
            )
        };
        let digest = super::stateless_digest;
        assert_eq!(digest(&table(0, "drop")), digest(&table(7, "drop")));
        assert_ne!(digest(&table(0, "drop")), digest(&table(0, "accept")));
        // Tokens, not text: layout is no change; a moved element or a split string is.
        assert_eq!(digest(r#"{"elem": ["10.0.0.1", "10.0.0.2"]}"#), digest(r#"{ "elem":["10.0.0.1","10.0.0.2"] }"#));
        assert_ne!(digest(r#"{"elem": ["10.0.0.1", "10.0.0.2"]}"#), digest(r#"{"elem": ["10.0.0.2", "10.0.0.1"]}"#));
        assert_ne!(digest(r#"["ab", "c"]"#), digest(r#"["a", "bc"]"#));
        // The liveness gate's element, renewed and counting down, is no change.
        let live =
            |t: u64, e: u64| format!(r#"{{"elem": [{{"elem": {{"val": "ipv4", "timeout": {t}, "expires": {e}}}}}]}}"#);
        assert_eq!(digest(&live(300, 299)), digest(&live(290, 12)));
        assert_ne!(digest(r#"{"elem": [1]}"#), digest(r#"{"elem": [1]"#), "not JSON is digested as text");
    }
}
