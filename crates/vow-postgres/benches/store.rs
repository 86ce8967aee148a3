//! criterion micro-benchmarks of the PostgreSQL store's hot paths: enqueue (decode +
//! validate + insert), lease selection, and ack (the same definitions as the embedded
//! store's, in `vow_store_conformance::bench`). `cargo bench -p vow-postgres`.
//!
//! The database: `VOW_BENCH_DATABASE_URL` (a cluster of yours; use a durable one,
//! `fsync=on` and `synchronous_commit=on`, to measure what production pays), else the
//! test cluster (`VOW_TEST_DATABASE_URL`, or a throwaway one started here, which runs
//! with `fsync=off`: then the figures are CPU and round trips, like the embedded
//! store's tmpfs ones). Each benchmark gets a fresh database (`CREATE DATABASE`).

use std::sync::Arc;

use criterion::{criterion_main, Criterion};
use vow_postgres::testing::Cluster;
use vow_postgres::PgStore;
use vow_store_conformance::bench::{self, Fixture};

fn stores(c: &mut Criterion) {
    let rt = bench::runtime();
    let given;
    let cluster = match std::env::var("VOW_BENCH_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            given = Cluster::at(&url);
            &given
        }
        _ => Cluster::shared(),
    };
    let rt_ref = &rt;
    let mut make = || {
        let db = cluster.database();
        let store = rt_ref
            .block_on(PgStore::connect(&db.url))
            .expect("connect to the bench database");
        Fixture::new(rt_ref, Arc::new(store), Box::new(db))
    };
    bench::store_paths(c, &rt, "pg", &mut make);
}

/// The benchmark group; criterion's macro makes an undocumented `pub fn`.
mod group {
    #![allow(missing_docs)] // criterion_group! generates `pub fn benches` without docs
    use super::*;
    use criterion::criterion_group;

    criterion_group! {
        name = benches;
        config = bench::config();
        targets = stores
    }
}
criterion_main!(group::benches);
