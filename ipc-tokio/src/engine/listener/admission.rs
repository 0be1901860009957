//! Admission at accept: per-uid slots for connections and handshakes, and the back-off of
//! an accept loop that finds no descriptor.

use super::*;

/// Connections and incomplete handshakes per uid, shared by the accept loop and the
/// connection tasks. Only the accept loop adds; a [`Slot`] gives its count back on drop.
/// The totals are published in [`EngineStats`].
#[derive(Debug)]
pub(super) struct UidCounts {
    pub(super) per_uid: Mutex<HashMap<u32, Counts>>,
    pub(super) stats: watch::Sender<EngineStats>,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counts {
    pub(super) connections: usize,
    pub(super) handshakes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotKind {
    Connection,
    Handshake,
}

/// One connection (or one handshake in progress) of one uid, counted while this lives.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) counts: Arc<UidCounts>,
    pub(super) uid: u32,
    pub(super) kind: SlotKind,
}

impl UidCounts {
    /// Takes a connection slot and a handshake slot for `uid`, or names the limit reached.
    pub(super) fn admit(
        self: &Arc<Self>,
        uid: u32,
        limits: &Limits,
    ) -> Result<(Slot, Slot), (Limit, u64)> {
        let mut map = self.per_uid.lock().unwrap_or_else(|e| e.into_inner());
        let counts = map.entry(uid).or_default();
        if counts.connections >= limits.connections_per_uid {
            return Err((Limit::ConnectionsPerUid, limits.connections_per_uid as u64));
        }
        if counts.handshakes >= limits.handshakes_per_uid {
            return Err((Limit::HandshakesPerUid, limits.handshakes_per_uid as u64));
        }
        counts.connections += 1;
        counts.handshakes += 1;
        self.stats.send_modify(|s| {
            s.connections += 1;
            s.handshakes += 1;
        });
        let slot = |kind| Slot {
            counts: self.clone(),
            uid,
            kind,
        };
        Ok((slot(SlotKind::Connection), slot(SlotKind::Handshake)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .per_uid
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(counts) = map.get_mut(&self.uid) {
            match self.kind {
                SlotKind::Connection => counts.connections = counts.connections.saturating_sub(1),
                SlotKind::Handshake => counts.handshakes = counts.handshakes.saturating_sub(1),
            }
            self.counts.stats.send_modify(|s| match self.kind {
                SlotKind::Connection => s.connections = s.connections.saturating_sub(1),
                SlotKind::Handshake => s.handshakes = s.handshakes.saturating_sub(1),
            });
            if counts.connections == 0 && counts.handshakes == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

// ===== accept =====

/// The accept loop's pause after a failed `accept` (EMFILE, ENFILE, ENOBUFS…): doubles from
/// [`Backoff::MIN`] to [`Backoff::MAX`] while failures repeat, and resets on success. The
/// listening socket stays readable while connections wait in its backlog, so without a
/// pause a full descriptor table would spin the loop at full speed.
#[derive(Debug)]
pub(super) struct Backoff {
    pub(super) delay: Duration,
    /// When the last failure was logged, and how many failed since.
    pub(super) logged: Option<Instant>,
    pub(super) unlogged: u64,
}

impl Backoff {
    pub(super) const MIN: Duration = Duration::from_millis(1);
    pub(super) const MAX: Duration = Duration::from_millis(100);
    /// At most one log line per this interval, whatever the number of failures.
    pub(super) const LOG_EVERY: Duration = Duration::from_secs(5);

    pub(super) fn new() -> Self {
        Self {
            delay: Self::MIN,
            logged: None,
            unlogged: 0,
        }
    }

    pub(super) fn success(&mut self) {
        self.delay = Self::MIN;
    }

    /// Records a failure, logs it if the interval has passed, and returns the pause.
    pub(super) fn failure(&mut self, error: &io::Error) -> Duration {
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .logged
            .is_none_or(|at| now.duration_since(at) >= Self::LOG_EVERY)
        {
            tracing::warn!(
                error = %error,
                failures = self.unlogged,
                backoff = ?self.delay,
                "accept failed; existing nodes are still served, new connections wait"
            );
            self.logged = Some(now);
            self.unlogged = 0;
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        delay
    }
}
