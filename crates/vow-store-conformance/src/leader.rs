//! Conformance cases of the leader lease (`leader_elect`, `leader_resign`), which keeps
//! the maintenance chores on one node at a time.

use vow_store::{LeaderElect, LeaderResign};

use crate::fixtures::{DynStore, T0};

async fn elect(store: &DynStore, node: &str, at: i64) -> bool {
    store
        .leader_elect(&LeaderElect {
            name: "promoter".into(),
            node_id: node.into(),
            ttl_ms: 5_000,
            now: T0.plus_ms(at),
        })
        .await
        .unwrap()
}

async fn resign(store: &DynStore, node: &str) {
    store
        .leader_resign(&LeaderResign {
            name: "promoter".into(),
            node_id: node.into(),
        })
        .await
        .unwrap();
}

/// One holder at a time; the holder renews; another node takes over only once the
/// lease lapsed or was resigned; duties have separate leases. A single-node store
/// (where every caller is the same process) answers `true` to everyone.
pub async fn leader_lease_is_exclusive_and_expires(store: DynStore) {
    assert!(elect(&store, "a", 0).await, "a free lease is granted");
    if elect(&store, "b", 1).await {
        // Single-node store: always the leader, whoever asks, whatever the time.
        assert!(elect(&store, "a", 2).await && elect(&store, "c", 10_000).await);
        resign(&store, "a").await;
        assert!(elect(&store, "b", 3).await);
        return;
    }
    assert!(elect(&store, "a", 4_000).await, "the holder renews");
    assert!(
        !elect(&store, "b", 8_999).await,
        "renewed until 9000: still held"
    );
    assert!(
        elect(&store, "b", 9_000).await,
        "a lapsed lease is taken over"
    );
    assert!(!elect(&store, "a", 9_001).await, "the old holder lost it");
    // Resigning by a node that does not hold the lease changes nothing.
    resign(&store, "a").await;
    assert!(!elect(&store, "a", 9_002).await);
    resign(&store, "b").await;
    assert!(
        elect(&store, "a", 9_003).await,
        "a resigned lease is free at once"
    );
    // Another duty has its own lease.
    let other = store
        .leader_elect(&LeaderElect {
            name: "reaper".into(),
            node_id: "b".into(),
            ttl_ms: 5_000,
            now: T0.plus_ms(9_004),
        })
        .await
        .unwrap();
    assert!(other, "duties are elected separately");
}
