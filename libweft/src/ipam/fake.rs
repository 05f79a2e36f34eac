//! Test stores: an in-memory [`Store`], and a wrapper that "crashes" any
//! store at its k-th write.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use ipnetwork::IpNetwork;

use super::{Attachment, AttachmentIndex, IpamError, Reservation, Store};

/// What the in-memory store holds.
#[derive(Debug, Default)]
pub struct State {
    pub reservations: BTreeMap<IpAddr, Attachment>,
    pub indexes: BTreeMap<Attachment, Vec<IpAddr>>,
    pub cursors: BTreeMap<IpNetwork, IpAddr>,
    pub quarantine: BTreeMap<IpAddr, Duration>,
}

/// An in-memory store; clones share one state, like processes sharing a directory.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    pub state: Rc<RefCell<State>>,
}

impl Store for MemStore {
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, IpamError>) -> Result<T, IpamError> {
        f()
    }
    fn owner(&self, ip: IpAddr) -> Result<Option<Attachment>, IpamError> {
        Ok(self.state.borrow().reservations.get(&ip).cloned())
    }
    fn reserve(&self, ip: IpAddr, owner: &Attachment) -> Result<bool, IpamError> {
        let mut s = self.state.borrow_mut();
        if s.reservations.contains_key(&ip) {
            return Ok(false);
        }
        s.reservations.insert(ip, owner.clone());
        Ok(true)
    }
    fn unreserve(&self, ip: IpAddr) -> Result<(), IpamError> {
        self.state.borrow_mut().reservations.remove(&ip);
        Ok(())
    }
    fn reservations(&self) -> Result<Vec<Reservation>, IpamError> {
        let s = self.state.borrow();
        let all = s.reservations.iter();
        Ok(all.map(|(ip, o)| Reservation { ip: *ip, owner: o.clone(), since: SystemTime::UNIX_EPOCH }).collect())
    }
    fn index(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        Ok(self.state.borrow().indexes.get(att).cloned().unwrap_or_default())
    }
    fn write_index(&self, att: &Attachment, ips: &[IpAddr]) -> Result<(), IpamError> {
        self.state.borrow_mut().indexes.insert(att.clone(), ips.to_vec());
        Ok(())
    }
    fn remove_index(&self, att: &Attachment) -> Result<(), IpamError> {
        self.state.borrow_mut().indexes.remove(att);
        Ok(())
    }
    fn indexes(&self) -> Result<Vec<AttachmentIndex>, IpamError> {
        let s = self.state.borrow();
        let all = s.indexes.iter();
        Ok(all
            .map(|(a, ips)| AttachmentIndex { attachment: a.clone(), ips: ips.clone(), since: SystemTime::UNIX_EPOCH })
            .collect())
    }
    fn cursor(&self, subnet: &IpNetwork) -> Result<Option<IpAddr>, IpamError> {
        Ok(self.state.borrow().cursors.get(subnet).copied())
    }
    fn set_cursor(&self, subnet: &IpNetwork, ip: IpAddr) -> Result<(), IpamError> {
        self.state.borrow_mut().cursors.insert(*subnet, ip);
        Ok(())
    }
    fn sweep(&self) -> Result<(), IpamError> {
        Ok(())
    }
    fn released_at(&self, ip: IpAddr) -> Result<Option<Duration>, IpamError> {
        Ok(self.state.borrow().quarantine.get(&ip).copied())
    }
    fn quarantine(&self, ip: IpAddr, at: Duration) -> Result<(), IpamError> {
        self.state.borrow_mut().quarantine.insert(ip, at);
        Ok(())
    }
    fn unquarantine(&self, ip: IpAddr) -> Result<(), IpamError> {
        self.state.borrow_mut().quarantine.remove(&ip);
        Ok(())
    }
    fn quarantined(&self) -> Result<Vec<(IpAddr, Duration)>, IpamError> {
        Ok(self.state.borrow().quarantine.iter().map(|(ip, at)| (*ip, *at)).collect())
    }
}

/// Wraps a store so that its k-th write (counting from 0) and every later
/// one fail without effect: the process "died" just before that write.
pub struct CrashAt<S> {
    inner: S,
    writes_left: Cell<Option<usize>>,
}

impl<S: Store> CrashAt<S> {
    /// Crashes at write `k`, or never for `None`.
    pub fn new(inner: S, k: Option<usize>) -> Self {
        CrashAt { inner, writes_left: Cell::new(k) }
    }

    fn write(&self) -> Result<(), IpamError> {
        match self.writes_left.get() {
            Some(0) => Err(IpamError::Io {
                op: "simulated crash before writing",
                path: "(test)".into(),
                source: std::io::Error::other("crash"),
            }),
            Some(n) => {
                self.writes_left.set(Some(n - 1));
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl<S: Store> Store for CrashAt<S> {
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, IpamError>) -> Result<T, IpamError> {
        self.inner.locked(f)
    }
    fn owner(&self, ip: IpAddr) -> Result<Option<Attachment>, IpamError> {
        self.inner.owner(ip)
    }
    fn reserve(&self, ip: IpAddr, owner: &Attachment) -> Result<bool, IpamError> {
        self.write()?;
        self.inner.reserve(ip, owner)
    }
    fn unreserve(&self, ip: IpAddr) -> Result<(), IpamError> {
        self.write()?;
        self.inner.unreserve(ip)
    }
    fn reservations(&self) -> Result<Vec<Reservation>, IpamError> {
        self.inner.reservations()
    }
    fn index(&self, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        self.inner.index(att)
    }
    fn write_index(&self, att: &Attachment, ips: &[IpAddr]) -> Result<(), IpamError> {
        self.write()?;
        self.inner.write_index(att, ips)
    }
    fn remove_index(&self, att: &Attachment) -> Result<(), IpamError> {
        self.write()?;
        self.inner.remove_index(att)
    }
    fn indexes(&self) -> Result<Vec<AttachmentIndex>, IpamError> {
        self.inner.indexes()
    }
    fn cursor(&self, subnet: &IpNetwork) -> Result<Option<IpAddr>, IpamError> {
        self.inner.cursor(subnet)
    }
    fn set_cursor(&self, subnet: &IpNetwork, ip: IpAddr) -> Result<(), IpamError> {
        self.write()?;
        self.inner.set_cursor(subnet, ip)
    }
    fn sweep(&self) -> Result<(), IpamError> {
        self.write()?;
        self.inner.sweep()
    }
    fn released_at(&self, ip: IpAddr) -> Result<Option<Duration>, IpamError> {
        self.inner.released_at(ip)
    }
    fn quarantine(&self, ip: IpAddr, at: Duration) -> Result<(), IpamError> {
        self.write()?;
        self.inner.quarantine(ip, at)
    }
    fn unquarantine(&self, ip: IpAddr) -> Result<(), IpamError> {
        self.write()?;
        self.inner.unquarantine(ip)
    }
    fn quarantined(&self) -> Result<Vec<(IpAddr, Duration)>, IpamError> {
        self.inner.quarantined()
    }
}
