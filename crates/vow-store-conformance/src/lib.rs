//! One conformance suite that every vow store backend runs.
//!
//! A backend's test file calls [`suite!`] with an async factory returning a fresh,
//! empty store and a guard that keeps its resources alive (a temp dir, a database):
//!
//! ```ignore
//! async fn make() -> (std::sync::Arc<dyn vow_store::Store>, Box<dyn std::any::Any + Send>) { ... }
//! vow_store_conformance::suite!(make);
//! ```
//!
//! Every case takes explicit `now` values, so time-dependent behaviour (backoff, lease
//! expiry, promotion) is tested without sleeping. A trait change ships with suite changes.

pub mod bench;
pub mod cases;
pub mod fixtures;
pub mod leader;
pub mod notices;

/// Expands to one `#[tokio::test]` per conformance case, each on a fresh store from `$make`.
#[macro_export]
macro_rules! suite {
    ($make:path) => {
        $crate::suite!(@cases $make;
            insert_get_and_isolation,
            idempotency_and_atomic_batches,
            lease_order_pause_and_schedule,
            fencing_and_heartbeats,
            failures_backoff_dead_and_retry,
            reaper_expires_leases,
            prune_finished_jobs,
            event_seqs_are_never_reused,
            ack_many_reports_per_item,
            cancel_semantics,
            events_and_bus,
            event_replay_since,
            list_filters_and_pages,
            queues_counts_and_settings,
            tenants_and_keys,
            model_based_random_ops,
        );
        $crate::suite!(@module leader; $make;
            leader_lease_is_exclusive_and_expires,
        );
        $crate::suite!(@module notices; $make;
            outbox_rows_come_with_transitions,
            claim_hold_and_record,
            breaker_skips_open_endpoints_and_probes,
            subscriptions_and_secrets,
            callback_secret_rotation,
            delivery_pages,
            per_endpoint_cap,
            an_open_breaker_backlog_does_not_block_others,
            settled_deliveries_are_pruned_with_their_log,
        );
    };
    (@module $module:ident; $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make().await;
                $crate::$module::$case(store).await;
            }
        )*
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make().await;
                $crate::cases::$case(store).await;
            }
        )*
    };
}
