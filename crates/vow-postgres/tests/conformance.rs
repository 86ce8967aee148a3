//! The shared store conformance suite, on a fresh PostgreSQL database per test
//! (`VOW_TEST_DATABASE_URL`, else a throwaway cluster started once for this process).

use std::any::Any;
use std::sync::Arc;

use vow_postgres::testing::TestDb;
use vow_store::Store;

async fn make() -> (Arc<dyn Store>, Box<dyn Any + Send>) {
    let db = TestDb::fresh().await;
    let url = format!("{}?pool_size=4", db.url);
    let store = vow_postgres::PgStore::connect(&url).await.unwrap();
    (Arc::new(store), Box::new(db))
}

vow_store_conformance::suite!(make);
