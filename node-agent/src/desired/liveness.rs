//! How long the policy table's liveness gate stays open
//! ([`crate::desired::policy_table::liveness_rule`]): until `period` after
//! the last moment the kernel provably held everything the agent had heard
//! from the API. That moment is, after a pass applied the views it read
//! with [`Freshness`] `seen`, `seen.as_of`; and as long as no view changed
//! since (and no apply failed), the views' current `as_of`: an idle agent
//! whose watches keep hearing bookmarks keeps its gate open. A new agent
//! has no such moment until its first pass applies complete lists, so it
//! never reopens a gate that closed while it was away.

use std::time::{Duration, Instant};

use crate::observe::policy_watch::Freshness;

/// The gate's state, from the agent's side.
#[derive(Debug, Clone)]
pub struct Liveness {
    period: Duration,
    /// The views' change count and `as_of` when a pass last applied them.
    applied: Option<(u64, Instant)>,
    /// A later apply failed: the kernel may not hold even what was applied.
    failed: bool,
    /// Until when the gate was opened when it was last written.
    written: Option<Instant>,
}

impl Liveness {
    /// A closed gate that opens for `period` past each fresh, applied view.
    pub fn new(period: Duration) -> Liveness {
        Liveness { period, applied: None, failed: false, written: None }
    }

    /// How long a pass that applies views seen with `seen` may open the gate
    /// from `now`, should it write the whole table.
    pub fn open_for_applying(&self, seen: Freshness, now: Instant) -> Option<Duration> {
        self.until(seen.as_of?, now)
    }

    /// A pass applied the views it read with `seen`.
    pub fn applied(&mut self, seen: Freshness) {
        if let Some(as_of) = seen.as_of {
            self.applied = Some((seen.changes, as_of));
            self.failed = false;
        }
    }

    /// A pass failed to apply the policy table.
    pub fn failed(&mut self) {
        self.failed = true;
    }

    /// How long the gate may stay open from `now`, the views being as
    /// `current` says; `None`: closed.
    pub fn open_for(&self, current: Freshness, now: Instant) -> Option<Duration> {
        let (changes, applied_as_of) = self.applied?;
        let as_of = match current.as_of {
            Some(heard) if !self.failed && current.changes == changes => heard.max(applied_as_of),
            _ => applied_as_of,
        };
        self.until(as_of, now)
    }

    fn until(&self, as_of: Instant, now: Instant) -> Option<Duration> {
        (as_of + self.period).checked_duration_since(now).filter(|d| *d >= Duration::from_secs(1))
    }

    /// Whether the gate should be written now, to stay open for
    /// `open_for`: it is closed in the kernel (or was never written), or
    /// the write would extend it by an eighth of the period or more (each
    /// bookmark does, about once a minute). Checked every [`Liveness::tick`],
    /// the kernel's gate then closes at most 3/16 of the period before
    /// [`Liveness::open_for`] does: with the longest silence of an idle
    /// watch (about 122 s, measured), never, for any period the agent accepts.
    pub fn due(&self, now: Instant, open_for: Duration) -> bool {
        match self.written {
            None => true,
            Some(until) => until <= now || (now + open_for).saturating_duration_since(until) >= self.period / 8,
        }
    }

    /// The gate was written at `now`, open for `open_for`.
    pub fn written(&mut self, now: Instant, open_for: Duration) {
        self.written = Some(now + open_for);
    }

    /// How often the agent should look at the gate.
    pub fn tick(&self) -> Duration {
        self.period / 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(300);

    fn fresh(changes: u64, as_of: Instant) -> Freshness {
        Freshness { changes, as_of: Some(as_of) }
    }

    #[test]
    fn closed_until_a_complete_view_is_applied() {
        let t0 = Instant::now();
        let mut g = Liveness::new(T);
        assert_eq!(g.open_for(fresh(3, t0), t0), None, "a new agent keeps the gate closed");
        assert_eq!(g.open_for_applying(Freshness { changes: 0, as_of: None }, t0), None, "lists incomplete");
        assert_eq!(g.open_for_applying(fresh(3, t0), t0), Some(T));
        g.applied(fresh(3, t0));
        assert_eq!(g.open_for(fresh(3, t0), t0 + Duration::from_secs(100)), Some(Duration::from_secs(200)));
    }

    #[test]
    fn an_idle_agent_hearing_its_watches_stays_open_past_the_period() {
        let t0 = Instant::now();
        let mut g = Liveness::new(T);
        g.applied(fresh(3, t0));
        // Bookmarks every minute, nothing changes: open long after T.
        let later = t0 + 10 * T;
        assert_eq!(g.open_for(fresh(3, later - Duration::from_secs(60)), later), Some(T - Duration::from_secs(60)));
    }

    #[test]
    fn unapplied_changes_silence_and_failures_let_it_close() {
        let t0 = Instant::now();
        let mut g = Liveness::new(T);
        g.applied(fresh(3, t0));
        let later = t0 + Duration::from_secs(250);
        // A view changed and no pass applied it: only what was applied counts.
        assert_eq!(g.open_for(fresh(4, later), later), Some(Duration::from_secs(50)));
        assert_eq!(g.open_for(fresh(4, later), t0 + T), None);
        // The watches went silent (API server unreachable): closes T after the last frame.
        assert_eq!(g.open_for(fresh(3, t0), t0 + T), None);
        // An apply failed: the views' freshness no longer counts.
        g.failed();
        assert_eq!(g.open_for(fresh(3, later), later), Some(Duration::from_secs(50)));
        g.applied(fresh(3, later));
        assert_eq!(g.open_for(fresh(3, later), later), Some(T));
    }

    #[test]
    fn written_when_it_gains_an_eighth_of_the_period_and_at_once_when_closed() {
        let t0 = Instant::now();
        let mut g = Liveness::new(T);
        assert!(g.due(t0, T));
        g.written(t0, Duration::from_secs(10));
        assert!(!g.due(t0 + Duration::from_secs(5), Duration::from_secs(5)));
        assert!(g.due(t0 + Duration::from_secs(10), Duration::from_secs(5)), "closed in the kernel: write at once");
        g.written(t0, T);
        // Ten seconds later, views heard 5 s ago: the write would gain 5 s only.
        assert!(!g.due(t0 + Duration::from_secs(10), T - Duration::from_secs(5)));
        // A bookmark a minute later: it gains a minute.
        assert!(g.due(t0 + Duration::from_secs(60), T));
    }
}
