//! criterion micro-benchmarks of the embedded store's hot paths: enqueue (decode +
//! validate + insert), lease selection, and ack (the shared definitions in
//! `vow_store_conformance::bench`). `cargo bench -p vow-sqlite`.
//!
//! Each store path is measured twice: on disk (the system temp dir; every commit is a
//! real fsync, as in production) and on tmpfs (`/dev/shm`, where fsync is free), so the
//! difference shows how much of a call is the disk and how much is CPU in SQLite and
//! the writer thread. `decode_validate` has no store at all.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use criterion::{criterion_main, Criterion};
use vow_sqlite::SqliteStore;
use vow_store_conformance::bench::{self, Fixture};

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The places to put the database: disk always, tmpfs when there is one.
fn roots() -> Vec<(&'static str, PathBuf)> {
    let mut roots = vec![("disk", std::env::temp_dir())];
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        roots.push(("tmpfs", shm));
    }
    roots
}

fn stores(c: &mut Criterion) {
    let rt = bench::runtime();
    static N: AtomicU32 = AtomicU32::new(0);
    for (place, root) in roots() {
        let rt_ref = &rt;
        let mut make = || {
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = root.join(format!("vow-store-bench-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("bench dir");
            let store = SqliteStore::open(dir.join("vow.db")).expect("open store");
            Fixture::new(rt_ref, Arc::new(store), Box::new(TempDir(dir)))
        };
        bench::store_paths(c, &rt, place, &mut make);
    }
}

/// The benchmark group; criterion's macro makes an undocumented `pub fn`.
mod group {
    #![allow(missing_docs)] // criterion_group! generates `pub fn benches` without docs
    use super::*;
    use criterion::criterion_group;

    criterion_group! {
        name = benches;
        config = bench::config();
        targets = bench::decode_validate_only, stores
    }
}
criterion_main!(group::benches);
