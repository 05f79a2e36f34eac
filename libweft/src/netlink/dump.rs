//! Dumps that hand each message over as it is read. The shared connection
//! (`netlink-proto`) reads a whole dump off its socket, decoding every
//! message, before the caller sees the first one: it reads until the
//! socket is empty, and the kernel refills it at each read until the dump
//! ends. At 20,000 Nodes the agent's resync held 40,000 decoded routes and
//! as many neighbours at once that way, about 10 MiB. A connection made by
//! [`Netlink::connect`] therefore keeps a socket of its own for dumps, on
//! which each datagram (a few hundred messages at most) is decoded, handed
//! over and dropped before the next is read.

use std::sync::Arc;

use futures::StreamExt;
use rtnetlink::packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols::NETLINK_ROUTE};

use super::{Netlink, NetlinkError, ctx};

/// The dump socket of a connection, one dump at a time.
pub(super) struct DumpSocket {
    socket: TokioSocket,
    /// Sequence number of the last request sent.
    seq: u32,
    /// A dump whose end was not read (its caller went away): its remaining
    /// messages come first and are skipped.
    unfinished: Option<u32>,
}

/// What one message of a dump means for it.
enum Step {
    Message(RouteNetlinkMessage),
    Done,
    Failed(rtnetlink::Error),
    Skip,
}

fn step(m: NetlinkMessage<RouteNetlinkMessage>) -> Step {
    match m.payload {
        NetlinkPayload::InnerMessage(inner) => Step::Message(inner),
        NetlinkPayload::Done(_) => Step::Done,
        // An error message with code 0 is an acknowledgement.
        NetlinkPayload::Error(e) if e.code.is_some() => Step::Failed(rtnetlink::Error::NetlinkError(e)),
        NetlinkPayload::Error(_) => Step::Done,
        _ => Step::Skip,
    }
}

/// The netlink messages of one datagram, each with its header. A
/// truncated last message is returned as it is, for the parser to reject.
pub fn split(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let len = len.clamp(16, rest.len());
        let msg = &rest[..len];
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        Some(msg)
    })
}

impl DumpSocket {
    /// A socket in the calling thread's namespace.
    pub(super) fn open() -> std::io::Result<DumpSocket> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
        socket.socket_mut().bind_auto()?;
        socket.socket_ref().connect(&SocketAddr::new(0, 0))?;
        Ok(DumpSocket { socket, seq: 0, unfinished: None })
    }

    /// Reads the dump `seq` to its end, handing its messages to `f`.
    async fn read(&mut self, seq: u32, f: &mut impl FnMut(RouteNetlinkMessage)) -> Result<(), Failure> {
        loop {
            let (buf, _) = self.socket.recv_from_full().await?;
            for part in split(&buf) {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(part)
                    .map_err(|e| rtnetlink::Error::InvalidNla(e.to_string()))?;
                if m.header.sequence_number != seq {
                    continue;
                }
                match step(m) {
                    Step::Message(inner) => f(inner),
                    Step::Done => return Ok(()),
                    Step::Failed(e) => return Err(e.into()),
                    Step::Skip => {}
                }
            }
        }
    }

    async fn dump(
        &mut self,
        request: RouteNetlinkMessage,
        f: &mut impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), Failure> {
        if let Some(old) = self.unfinished {
            // The kernel answers one dump at a time per socket.
            self.read(old, &mut |_| {}).await?;
            self.unfinished = None;
        }
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut msg = NetlinkMessage::from(request);
        msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        msg.header.sequence_number = seq;
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        // Marked before anything is sent: a caller that goes away at any
        // await below leaves the rest of its dump for the next one to skip.
        self.unfinished = Some(seq);
        self.socket.send(&buf).await?;
        self.read(seq, f).await?;
        self.unfinished = None;
        Ok(())
    }
}

/// Why a dump failed.
enum Failure {
    Socket(std::io::Error),
    Answer(rtnetlink::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Socket(e)
    }
}

impl From<rtnetlink::Error> for Failure {
    fn from(e: rtnetlink::Error) -> Failure {
        Failure::Answer(e)
    }
}

/// The dump socket, shared by a connection's clones.
pub(super) type Dumps = Arc<tokio::sync::Mutex<DumpSocket>>;

impl Netlink {
    /// Sends the dump `request` and hands each message of the answer to
    /// `f`: as it is read on the connection's dump socket, or, for a
    /// connection over a socket opened elsewhere ([`Netlink::from_socket`]),
    /// once the shared connection has read them. `what` names the dump in
    /// errors.
    pub(super) async fn dump(
        &self,
        request: RouteNetlinkMessage,
        what: impl FnOnce() -> String,
        mut f: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), NetlinkError> {
        let result = match &self.dumps {
            Some(dumps) => dumps.lock().await.dump(request, &mut f).await,
            None => self.dump_shared(request, &mut f).await.map_err(Failure::Answer),
        };
        match result {
            Ok(()) => Ok(()),
            Err(Failure::Answer(e)) => Err(ctx(what)(e)),
            Err(Failure::Socket(source)) => Err(NetlinkError::Io { op: what(), source }),
        }
    }

    async fn dump_shared(
        &self,
        request: RouteNetlinkMessage,
        f: &mut impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), rtnetlink::Error> {
        let mut msg = NetlinkMessage::from(request);
        msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut answers = self.handle.clone().request(msg)?;
        while let Some(m) = answers.next().await {
            match step(m) {
                Step::Message(inner) => f(inner),
                Step::Done => break,
                Step::Failed(e) => return Err(e),
                Step::Skip => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_splits_into_its_messages() {
        let mut buf = Vec::new();
        for seq in [1u32, 2] {
            let mut m = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(Default::default()));
            m.header.sequence_number = seq;
            m.finalize();
            let mut one = vec![0; m.buffer_len()];
            m.serialize(&mut one);
            buf.extend(one);
        }
        let seqs: Vec<u32> = split(&buf)
            .map(|part| NetlinkMessage::<RouteNetlinkMessage>::deserialize(part).expect("valid").header.sequence_number)
            .collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(split(&buf[..10]).count(), 0, "shorter than a header");
        let truncated = &buf[..buf.len() - 4];
        let last = split(truncated).last().expect("a part");
        assert!(NetlinkMessage::<RouteNetlinkMessage>::deserialize(last).is_err(), "a truncated message is rejected");
    }
}
