//! Which connections the session holds open, and which of them are still
//! to show the token.
//!
//! A connection is *pending* from accept until a request on it presents
//! the session token, then *admitted*. Pending connections are capped, and
//! a new connection over the cap closes the oldest pending one instead of
//! being refused: a flood of idle or slow connections then keeps cycling
//! through the pending slots while the person with the token, who needs a
//! slot only for a handshake and a request head, still gets one. Admitted
//! connections (requests with the token) are never closed to make room;
//! when every slot is theirs, new connections are closed at once.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::task::AbortHandle;

/// Connections open at once, pending and admitted.
pub(super) const MAX_CONNECTIONS: usize = 128;
/// Connections open at once that have yet to present the token.
pub(super) const MAX_PENDING: usize = 32;

/// What to do with a connection just accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admission {
    Accept,
    /// Accept it and close the oldest pending connection.
    AcceptClosingOldest,
    /// Close it at once: every slot belongs to a request with the token.
    Refuse,
}

/// The decision for a new connection, given what is open.
pub(super) fn admission(pending: usize, admitted: usize) -> Admission {
    if pending < MAX_PENDING && pending + admitted < MAX_CONNECTIONS {
        Admission::Accept
    } else if pending > 0 {
        Admission::AcceptClosingOldest
    } else {
        Admission::Refuse
    }
}

#[derive(Default)]
struct Table {
    /// Oldest first, with the handle that closes each.
    pending: VecDeque<(u64, AbortHandle)>,
    admitted: HashSet<u64>,
    next_id: u64,
}

/// The session's open connections.
#[derive(Clone, Default)]
pub(super) struct Connections(Arc<Mutex<Table>>);

impl Connections {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts serving a connection just accepted with `spawn` (which gets
    /// the connection's [`Slot`] and returns its task's abort handle), or
    /// closes it at once; closes the oldest pending connection when the
    /// new one takes its place. Returns the decision.
    pub(super) fn open(&self, spawn: impl FnOnce(Slot) -> AbortHandle) -> Admission {
        let mut table = self.table();
        let decision = admission(table.pending.len(), table.admitted.len());
        let evicted = match decision {
            Admission::Refuse => return decision,
            Admission::Accept => None,
            Admission::AcceptClosingOldest => table.pending.pop_front(),
        };
        let id = table.next_id;
        table.next_id += 1;
        // The task cannot end (and drop its slot, which takes this lock)
        // before its entry is in the table.
        let handle = spawn(Slot {
            id,
            connections: self.clone(),
        });
        table.pending.push_back((id, handle));
        drop(table);
        // Aborted outside the lock: the aborted task's slot takes it.
        if let Some((_, handle)) = evicted {
            handle.abort();
        }
        decision
    }

    /// (pending, admitted) connections.
    #[cfg(test)]
    pub(super) fn counts(&self) -> (usize, usize) {
        let table = self.table();
        (table.pending.len(), table.admitted.len())
    }
}

/// One open connection's place in the table; it is given up when the
/// connection's task ends or is aborted.
pub(super) struct Slot {
    id: u64,
    connections: Connections,
}

impl Slot {
    /// What a request on this connection uses to admit it.
    pub(super) fn admitter(&self) -> Admit {
        Admit {
            id: self.id,
            connections: self.connections.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.connections.table();
        table.pending.retain(|(id, _)| *id != self.id);
        table.admitted.remove(&self.id);
    }
}

/// Carried by every request (as an extension): admits its connection once
/// the request has shown the token.
#[derive(Clone)]
pub(super) struct Admit {
    id: u64,
    connections: Connections,
}

impl Admit {
    /// Moves the connection from pending to admitted (once).
    pub(super) fn admit(&self) {
        let mut table = self.connections.table();
        let before = table.pending.len();
        table.pending.retain(|(id, _)| *id != self.id);
        if table.pending.len() < before {
            table.admitted.insert(self.id);
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn the_newest_connection_takes_the_oldest_pending_slot() {
        use Admission::*;
        for (pending, admitted, expected) in [
            (0, 0, Accept),
            (MAX_PENDING - 1, 0, Accept),
            (MAX_PENDING, 0, AcceptClosingOldest),
            (1, MAX_CONNECTIONS - 2, Accept),
            (1, MAX_CONNECTIONS - 1, AcceptClosingOldest),
            // Requests with the token are never closed to make room.
            (0, MAX_CONNECTIONS, Refuse),
        ] {
            assert_eq!(
                admission(pending, admitted),
                expected,
                "{pending} pending, {admitted} admitted"
            );
        }
    }

    /// Opens a connection whose task waits forever holding its slot.
    fn open_idle(
        connections: &Connections,
        tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> (Admission, Option<Admit>) {
        let mut admit = None;
        let decision = connections.open(|slot| {
            admit = Some(slot.admitter());
            let task = tokio::spawn(async move {
                let _slot = slot;
                std::future::pending::<()>().await
            });
            let handle = task.abort_handle();
            tasks.push(task);
            handle
        });
        (decision, admit)
    }

    #[tokio::test]
    async fn slots_move_from_pending_to_admitted_and_are_given_back() {
        let connections = Connections::default();
        let mut tasks = Vec::new();
        let mut admits = Vec::new();
        for _ in 0..MAX_PENDING {
            let (decision, admit) = open_idle(&connections, &mut tasks);
            assert_eq!(decision, Admission::Accept);
            admits.push(admit.unwrap());
        }
        assert_eq!(connections.counts(), (MAX_PENDING, 0));
        admits[0].admit();
        admits[0].admit();
        assert_eq!(connections.counts(), (MAX_PENDING - 1, 1));

        // Two more: the first closes nothing (a slot is free), the second
        // closes the oldest pending connection, the second one opened.
        for expected in [Admission::Accept, Admission::AcceptClosingOldest] {
            assert_eq!(open_idle(&connections, &mut tasks).0, expected);
        }
        assert!(tasks.remove(1).await.unwrap_err().is_cancelled());
        admits[1].admit(); // closed already: admits nothing
        assert_eq!(connections.counts(), (MAX_PENDING, 1));
        // The admitted one ends: its slot is given back.
        tasks.remove(0).abort();
        while connections.counts().1 == 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(connections.counts(), (MAX_PENDING, 0));
    }
}
