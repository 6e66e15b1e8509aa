//! Tests of the acknowledgements, synchronous waits and the in-sync set.

use super::*;

fn pos(txid: u64, checksum: u64) -> Position {
    Position { txid, checksum }
}

fn peer() -> SocketAddr {
    "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!())
}

fn acks(sync: u32, fallback: SyncFallback) -> Acks {
    let acks = Acks::default();
    acks.configure(ReplicationConfig {
        sync,
        sync_timeout: Duration::from_millis(50),
        sync_fallback: fallback,
        sync_failover: crate::config::SyncFailover::Wait,
        ..ReplicationConfig::default()
    });
    acks
}

fn ack(acks: &Acks, node: &str, db: &str, p: Position) {
    let dbs = BTreeMap::from([(db.to_string(), p)]);
    acks.record(node, peer(), dbs, &|| vec![(db.to_string(), p)]);
}

/// `record` with this node's newest positions `newest`.
fn ack_with(acks: &Acks, node: &str, held: &[(&str, Position)], newest: &[(&str, Position)]) {
    let dbs = held.iter().map(|(db, p)| (db.to_string(), *p)).collect();
    let newest: Vec<(String, Position)> = newest.iter().map(|(d, p)| (d.to_string(), *p)).collect();
    acks.record(node, peer(), dbs, &|| newest.clone());
}

#[test]
fn a_commit_waits_for_the_nodes_it_needs() {
    let acks = std::sync::Arc::new(acks(2, SyncFallback::Fail));
    ack(&acks, "a", "db", pos(3, 33));
    let waiter = {
        let acks = acks.clone();
        std::thread::spawn(move || acks.wait_for("db", pos(3, 33), &Vec::new))
    };
    ack(&acks, "b", "db", pos(3, 33));
    assert_eq!(waiter.join().ok(), Some(Ok(())));
}

#[test]
fn another_history_does_not_count() {
    let acks = acks(1, SyncFallback::Fail);
    // The same TXID with another checksum, and a later TXID: while a
    // commit waits, nothing later of its database is recorded here.
    ack(&acks, "a", "db", pos(3, 99));
    ack(&acks, "b", "db", pos(4, 44));
    let err = acks.wait_for("db", pos(3, 33), &Vec::new);
    assert_eq!(err.map_err(|e| (e.held, e.needed)), Err((0, 1)));
}

#[test]
fn async_fallback_degrades_until_a_replica_catches_up() {
    let acks = acks(1, SyncFallback::Async);
    assert!(acks.wait_for("db", pos(1, 11), &Vec::new).is_ok());
    assert!(acks.degraded());
    // An old position is not enough to leave the degraded mode.
    let newest = [("db", pos(2, 22))];
    ack_with(&acks, "a", &[("db", pos(1, 11))], &newest);
    assert!(acks.degraded());
    ack_with(&acks, "a", &[("db", pos(2, 22))], &newest);
    assert!(!acks.degraded());
    let newest = [("db".to_string(), pos(2, 22))];
    assert_eq!(acks.in_sync(&newest), vec!["a".to_string()]);
}

#[test]
fn asynchronous_replication_never_waits() {
    let acks = Acks::default();
    assert!(acks.wait_for("db", pos(1, 1), &Vec::new).is_ok());
    let acks = self::acks(0, SyncFallback::Fail);
    assert!(acks.wait_for("db", pos(1, 1), &Vec::new).is_ok());
    assert!(!acks.synchronous());
}

/// Acks with a publisher that records each set it is given.
fn published(sync: u32, fallback: SyncFallback) -> (Acks, std::sync::Arc<Mutex<Vec<Vec<String>>>>) {
    let acks = acks(sync, fallback);
    let sets = std::sync::Arc::new(Mutex::new(Vec::new()));
    let seen = sets.clone();
    acks.set_publisher(Box::new(move |set, _| {
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(set.iter().cloned().collect());
        Ok(())
    }));
    acks.promoted();
    (acks, sets)
}

fn sets(sets: &Mutex<Vec<Vec<String>>>) -> Vec<Vec<String>> {
    sets.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[test]
fn commits_wait_for_the_published_members_and_replace_one_that_lags() {
    let (acks, published) = published(1, SyncFallback::Fail);
    assert_eq!(sets(&published), vec![Vec::<String>::new()]);
    // "a" holds everything: it joins, and the set is published.
    ack(&acks, "a", "db", pos(1, 11));
    assert_eq!(acks.members(), vec!["a".to_string()]);
    assert_eq!(sets(&published).last(), Some(&vec!["a".to_string()]));
    // "b" alone holding TXID 2 is not enough while "a" is the member.
    ack(&acks, "b", "db", pos(1, 11));
    ack_with(&acks, "b", &[("db", pos(2, 22))], &[("db", pos(2, 22))]);
    let newest = || vec![("db".to_string(), pos(2, 22))];
    assert!(acks.wait_for("db", pos(2, 22), &newest).is_ok());
    // It waited the timeout, then "b" replaced "a", published first.
    assert_eq!(acks.members(), vec!["b".to_string()]);
    assert_eq!(sets(&published).last(), Some(&vec!["b".to_string()]));
}

#[test]
fn no_replacement_fails_or_degrades_to_an_empty_set() {
    let (acks, _) = published(1, SyncFallback::Fail);
    ack(&acks, "a", "db", pos(1, 11));
    let newest = || vec![("db".to_string(), pos(2, 22))];
    let err = acks.wait_for("db", pos(2, 22), &newest);
    assert_eq!(err.map_err(|e| e.held), Err(0));
    assert_eq!(acks.members(), vec!["a".to_string()]);

    let (acks, published) = published(1, SyncFallback::Async);
    ack(&acks, "a", "db", pos(1, 11));
    assert!(acks.wait_for("db", pos(2, 22), &newest).is_ok());
    assert!(acks.degraded());
    assert_eq!(sets(&published).last(), Some(&Vec::<String>::new()));
    // Back once a node holds everything, published again.
    ack_with(&acks, "a", &[("db", pos(2, 22))], &[("db", pos(2, 22))]);
    assert!(!acks.degraded());
    assert_eq!(sets(&published).last(), Some(&vec!["a".to_string()]));
}

#[test]
fn a_node_behind_on_another_database_does_not_join() {
    let (acks, _) = published(1, SyncFallback::Fail);
    let newest = [("x", pos(1, 11)), ("y", pos(5, 55))];
    ack_with(&acks, "a", &[("x", pos(1, 11))], &newest);
    assert!(acks.members().is_empty());
    ack_with(&acks, "a", &[("y", pos(5, 55))], &newest);
    assert_eq!(acks.members(), vec!["a".to_string()]);
}

#[test]
fn a_member_is_published_only_once_it_holds_what_was_recorded_meanwhile() {
    let (acks, published) = published(1, SyncFallback::Fail);
    // "a" held the newest when it acknowledged, but TXID 2 was recorded
    // (and might have been acknowledged) before the set was published:
    // it joins in memory, unpublished until it holds TXID 2.
    let newest = std::cell::Cell::new(pos(1, 11));
    let dbs = BTreeMap::from([("db".to_string(), pos(1, 11))]);
    let read = || {
        let now = vec![("db".to_string(), newest.get())];
        newest.set(pos(2, 22));
        now
    };
    acks.record("a", peer(), dbs, &read);
    assert_eq!(acks.members(), vec!["a".to_string()]);
    assert_eq!(sets(&published), vec![Vec::<String>::new()]);
    ack_with(&acks, "a", &[("db", pos(2, 22))], &[("db", pos(2, 22))]);
    assert_eq!(sets(&published).last(), Some(&vec!["a".to_string()]));
}

#[test]
fn a_member_that_goes_back_leaves_the_set_published_first() {
    let (acks, published) = published(1, SyncFallback::Fail);
    ack(&acks, "a", "db", pos(2, 22));
    assert_eq!(acks.members(), vec!["a".to_string()]);
    // It dropped received files: its position goes back.
    ack_with(&acks, "a", &[("db", pos(1, 11))], &[("db", pos(2, 22))]);
    assert!(acks.members().is_empty());
    assert_eq!(sets(&published).last(), Some(&Vec::<String>::new()));
}

#[test]
fn a_failed_first_publication_is_retried_as_the_first() {
    let acks = acks(1, SyncFallback::Fail);
    let firsts = std::sync::Arc::new(Mutex::new(Vec::new()));
    let seen = firsts.clone();
    acks.set_publisher(Box::new(move |_, first| {
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.push(first);
        if seen.len() == 1 {
            Err("Consul is away".to_string())
        } else {
            Ok(())
        }
    }));
    acks.promoted();
    ack(&acks, "a", "db", pos(1, 11));
    ack(&acks, "a", "db", pos(2, 22));
    assert_eq!(
        firsts.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        vec![true, true]
    );
}

#[test]
fn max_lag_counts_from_the_oldest_transaction_no_replica_holds() {
    let acks = Acks::default();
    acks.configure(ReplicationConfig {
        max_lag: Duration::from_millis(30),
        ..ReplicationConfig::default()
    });
    acks.note_recorded("db", pos(1, 11));
    acks.note_recorded("db", pos(2, 22));
    assert!(acks.admit("db").is_ok());
    std::thread::sleep(Duration::from_millis(40));
    let refused = acks.admit("db").unwrap_err();
    assert_eq!((refused.db.as_str(), refused.pos), ("db", pos(1, 11)));
    // A replica holding TXID 1 leaves TXID 2, as old.
    ack(&acks, "a", "db", pos(1, 11));
    assert_eq!(acks.admit("db").map_err(|e| e.pos), Err(pos(2, 22)));
    ack(&acks, "a", "db", pos(2, 22));
    assert!(acks.admit("db").is_ok());
    assert_eq!(acks.unacknowledged_for(), Duration::ZERO);
    // A transaction taken back is no longer waited for.
    acks.note_recorded("db", pos(3, 33));
    acks.note_taken_back("db", pos(3, 33));
    std::thread::sleep(Duration::from_millis(40));
    assert!(acks.admit("db").is_ok());
}

#[test]
fn max_lag_txns_counts_what_no_replica_holds() {
    let acks = Acks::default();
    acks.configure(ReplicationConfig {
        max_lag_txns: 2,
        ..ReplicationConfig::default()
    });
    acks.note_recorded("db", pos(1, 11));
    acks.note_recorded("db", pos(2, 22));
    assert!(acks.admit("db").is_ok());
    acks.note_recorded("db", pos(3, 33));
    let refused = acks.admit("db").unwrap_err();
    assert_eq!((refused.txns, refused.pos), (3, pos(1, 11)));
    assert!(
        refused.to_string().contains("max-lag-txns is 2"),
        "{refused}"
    );
    ack(&acks, "a", "db", pos(1, 11));
    assert!(acks.admit("db").is_ok());
}

#[test]
fn degrading_publishes_the_empty_set_first() {
    let (acks, published) = published(1, SyncFallback::Fail);
    ack(&acks, "a", "db", pos(1, 11));
    assert_eq!(sets(&published).last(), Some(&vec!["a".to_string()]));
    acks.degrade("a WAL commit stands without its replicas");
    assert!(acks.degraded());
    assert!(acks.members().is_empty());
    assert_eq!(sets(&published).last(), Some(&Vec::<String>::new()));
    // Without synchronous replication there is nothing to degrade.
    let acks = self::acks(0, SyncFallback::Fail);
    acks.degrade("nothing");
    assert!(!acks.degraded());
}
