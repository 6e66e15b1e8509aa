//! Thread priority for replication work.
//!
//! On a small host, a few applications reading a replica in tight loops can
//! take every core; the threads that move transactions (the primary's
//! stream threads, the replica's stream and apply threads) then wait for
//! CPU behind them and replication lags by scheduler slices. Linux keeps a
//! niceness per thread, so those threads alone run ahead of applications.

/// Niceness of replication threads.
const REPLICATION_NICE: libc::c_int = -10;

/// Gives the calling thread `REPLICATION_NICE`. Without the privilege to
/// (litefs not root, no CAP_SYS_NICE) it stays at normal priority, with a
/// debug line.
pub fn raise_for_replication(thread: &str) {
    // SAFETY: gettid and setpriority take no pointers.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, REPLICATION_NICE)
    };
    if rc != 0 {
        log::debug!(
            "{thread} thread: cannot raise its priority: {}",
            std::io::Error::last_os_error()
        );
    }
}
