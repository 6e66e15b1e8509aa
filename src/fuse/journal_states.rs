//! What the mount knows of each database's rollback journal on the
//! primary, by database name: one `JournalState` per database, all behind
//! one mutex. It is a leaf lock: held only to read or change one entry,
//! never while calling out, so it nests inside any other lock.
//!
//! `fuse.rs` and `writes.rs` move a journal between its states as SQLite
//! writes, syncs, truncates and deletes it; `journal.rs` decides with them
//! whether a journal may pass through the kernel; the `Applier` clears
//! `active` at a step-down (`role_change.rs`). A database without an entry
//! has every flag off.

use std::collections::HashMap;
use std::sync::Mutex;

/// One database's journal as the mount has seen it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct JournalState {
    /// The journal holds a live header: a write transaction is under way,
    /// and the journal's end will be its commit.
    pub(super) active: bool,
    /// The journal ended a recorded transaction (zeroed header or
    /// truncated) and no new transaction has written its header since.
    /// SQLite syncs such a journal only so that its end survives a power
    /// loss, which litefs does not need: the transaction's LTX file is on
    /// disk already, and a journal that comes back whole after a power
    /// loss is one whose transaction start-up recovery finds recorded (the
    /// database's checksum is the newest LTX file's), so it deletes the
    /// journal instead of rolling it back (`Db::recover_journal`). Such a
    /// sync is answered without a disk flush (`journal_fsync`); every sync
    /// before the end (the records, then the header) is a real one.
    pub(super) ended: bool,
    /// SQLite deleted the journal while litefs kept its backing file,
    /// emptied: shown as absent until SQLite creates it again.
    pub(super) hidden: bool,
    /// The journal was synced with a live header since it was opened for
    /// writing or its last transaction ended (`journal.rs`).
    pub(super) synced: bool,
    /// The database's last recorded transaction synced its journal before
    /// writing the database: its journal may pass through (`journal.rs`).
    pub(super) syncing_db: bool,
}

/// Every database's `JournalState`.
#[derive(Debug, Default)]
pub(super) struct JournalStates {
    states: Mutex<HashMap<String, JournalState>>,
}

impl JournalStates {
    /// States for a mount starting with the journals of `hidden` kept
    /// from an earlier run, hidden.
    pub(super) fn with_hidden(hidden: impl IntoIterator<Item = String>) -> JournalStates {
        let state = JournalState {
            hidden: true,
            ..JournalState::default()
        };
        let states = hidden.into_iter().map(|name| (name, state)).collect();
        JournalStates {
            states: Mutex::new(states),
        }
    }

    /// `db`'s journal state.
    pub(super) fn get(&self, db: &str) -> JournalState {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.get(db).copied().unwrap_or_default()
    }

    /// Changes `db`'s journal state with `change`, under the lock.
    pub(super) fn update(&self, db: &str, change: impl FnOnce(&mut JournalState)) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        match states.get_mut(db) {
            Some(state) => {
                change(state);
                if *state == JournalState::default() {
                    states.remove(db);
                }
            }
            None => {
                let mut state = JournalState::default();
                change(&mut state);
                if state != JournalState::default() {
                    states.insert(db.to_string(), state);
                }
            }
        }
    }

    /// Forgets `db`'s journal (the database was deleted): a new database
    /// of the name starts with every flag off but `syncing_db`, since what
    /// writes the name again (an application or a test harness that
    /// creates its database afresh) most likely syncs as it did before.
    /// A new database's first transactions are then as fast as the ones
    /// before; should the writer not sync after all (synchronous=OFF),
    /// `journal.rs` handles it as for a connection that turns it off.
    pub(super) fn forget(&self, db: &str) {
        self.update(db, |state| {
            *state = JournalState {
                syncing_db: state.syncing_db,
                ..JournalState::default()
            }
        });
    }
}
