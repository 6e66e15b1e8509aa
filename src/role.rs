//! The node's role: primary (writable) or replica (read-only, following a
//! named primary). `node` changes it when the lease moves; the mount reads
//! it on every change it is asked to make, and the HTTP server before an
//! import. It sits below them all, so that neither depends on the other.

use std::sync::RwLock;

/// Whether this node is primary, and if not, who is. Shared with the node,
/// which changes it when the lease moves.
#[derive(Debug)]
pub struct Role {
    state: RwLock<RoleState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RoleState {
    Primary,
    /// Read-only; the primary's hostname when one is known.
    Replica(Option<String>),
}

impl Role {
    /// A role that starts as primary.
    pub fn primary() -> Role {
        Role {
            state: RwLock::new(RoleState::Primary),
        }
    }

    /// A read-only role, replicating from `hostname` when one is known.
    pub fn replica(hostname: Option<String>) -> Role {
        Role {
            state: RwLock::new(RoleState::Replica(hostname)),
        }
    }

    /// True when this node accepts writes.
    pub fn is_primary(&self) -> bool {
        *self.state.read().unwrap_or_else(|e| e.into_inner()) == RoleState::Primary
    }

    /// The primary's hostname when this node is a replica that knows it.
    pub fn hostname(&self) -> Option<String> {
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            RoleState::Primary => None,
            RoleState::Replica(h) => h.clone(),
        }
    }

    /// Keeps this node primary while one change to a database's files is
    /// made: `set_replica` waits for the guard, so no write lands after a
    /// step-down has begun. `None` when this node is not primary. Holders
    /// must not ask the role anything else until they drop it.
    pub fn hold_primary(&self) -> Option<PrimaryGuard<'_>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        (*state == RoleState::Primary).then_some(PrimaryGuard { _state: state })
    }

    /// Makes this node the primary.
    pub fn set_primary(&self) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = RoleState::Primary;
    }

    /// Makes this node read-only, following `hostname` when known.
    pub fn set_replica(&self, hostname: Option<String>) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = RoleState::Replica(hostname);
    }
}

/// Proof that this node stays primary while it is held (see
/// [`Role::hold_primary`]).
pub struct PrimaryGuard<'a> {
    _state: std::sync::RwLockReadGuard<'a, RoleState>,
}
