//! The shared store conformance suite, on a fresh SQLite file per test.

use std::any::Any;
use std::sync::Arc;

use vow_store::Store;

async fn make() -> (Arc<dyn Store>, Box<dyn Any + Send>) {
    let dir = tempfile::tempdir().unwrap();
    let store = vow_sqlite::SqliteStore::open(dir.path().join("vow.db")).unwrap();
    (Arc::new(store), Box::new(dir))
}

vow_store_conformance::suite!(make);
