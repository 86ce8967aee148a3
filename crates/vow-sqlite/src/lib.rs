//! vow's embedded store: SQLite in WAL mode, every answer durable.
//!
//! One writer thread owns the only write connection (but for a lone short write, which
//! runs on its caller's thread while the writer is idle). It takes every command queued
//! on its channel, runs each inside a savepoint of one transaction and commits once. A
//! syncer thread then `fdatasync`s the write-ahead log and only then answers the
//! callers and publishes their effects on the [`Bus`]. Under load, hundreds of enqueues
//! and acks share one sync (group commit), and the writer runs the next transaction
//! while the previous one's sync is in flight (pipelined commit); with a single caller
//! it degrades to one sync per request, the physical floor.
//!
//! The writer's connection runs with `synchronous=NORMAL`, so SQLite itself does not
//! sync the log at commit; the syncer does, on its own descriptor of the same file,
//! before anyone hears of the transaction. A failed sync aborts the process (as
//! PostgreSQL does): the kernel may have dropped the pages, and what is on disk is what
//! a restart must trust.
//!
//! Reads run on a small pool of reader threads with their own connections; WAL lets
//! them proceed beside the writer. A reader's snapshot can include a transaction whose
//! sync is still in flight, so a read returns only once every transaction it may have
//! seen is durable: nothing a power loss could take back is ever shown.
//!
//! Leases are the one exception: a lease is answered as soon as its transaction has
//! committed, and that transaction commits without waiting for the syncer to be free
//! ([`Answer::Committed`]). A lease promises its worker nothing durable. A power loss
//! before the sync takes it back: the job is available again and runs again, as after
//! an expired lease, and the first worker's outcome is refused, since the lease id it
//! holds is gone. A process crash (`kill -9`) takes nothing back: the log's pages are
//! in the kernel's cache. Every later answered write is synced after the lease's
//! commit, so the lease is durable before any outcome recorded under it. The lease's
//! job events are still published only once it is durable, in the log's order.

mod jobs;
mod notices;
mod rows;
mod schema;
mod tenants;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;
use vow_core::api::{
    CallbackSecretView, DeliveryView, JobEventView, Page, QueueView, TenantView, WebhookView,
};
use vow_core::{
    DeliveryId, Job, JobId, KeyId, QueueName, TenantId, TenantName, Timestamp, WebhookId,
};
use vow_store::*;

pub use schema::MIGRATIONS;

/// Most commands one transaction takes before committing.
const MAX_GROUP: usize = 1_024;
/// Reader threads (and connections).
const READERS: usize = 4;
/// Prepared statements each connection keeps.
const STATEMENT_CACHE: usize = 256;
/// Largest batch (jobs, acks) a caller may run on its own thread ([`WriteSide::run_inline`]).
const INLINE_MAX_ITEMS: usize = 16;
/// Longest [`SqliteStore::close`] waits for the writes under way.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a command asks the bus to do once its transaction is durable, and the changes
/// to the queues' counts it made (written in its own transaction: [`jobs::Counts`]).
#[derive(Debug, Default)]
pub(crate) struct Effects {
    wake: Vec<(TenantId, QueueName)>,
    events: Vec<(TenantId, JobEventView)>,
    nudge_chores: bool,
    counts: jobs::Counts,
}

impl Effects {
    fn apply(self, bus: &Bus) {
        // A batch enqueue names its queue once per job: wake its leases once.
        let mut woken = std::collections::HashSet::new();
        for (tenant, queue) in &self.wake {
            if woken.insert((tenant, queue)) {
                bus.wake_queue(tenant, queue);
            }
        }
        for (tenant, event) in self.events {
            bus.publish(&tenant, [event]);
        }
        if self.nudge_chores {
            bus.nudge_chores();
        }
    }
}

type Finish = Box<dyn FnOnce(Result<(), Arc<str>>) + Send>;
/// A write command: runs on the writer's connection inside the open transaction (`alone`
/// when it is the transaction's only command) and returns what to do once the
/// transaction has ended ([`Ran`]).
type WriteCmd = Box<dyn FnOnce(&Connection, bool) -> Ran + Send>;

/// When a write command's caller is answered. Its effects are published once its
/// transaction is durable either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Once its transaction has been synced: what a client is told is saved is on disk.
    Synced,
    /// As soon as its transaction has committed, before the sync: leases only (see the
    /// crate's documentation). A transaction holding such a command commits at once
    /// rather than wait for the syncer to be free.
    Committed,
}

/// What a write command left once it ran.
struct Ran {
    /// What to do once its transaction is durable (or has failed): publish its effects
    /// and, but for [`Answer::Committed`], answer its caller.
    finish: Finish,
    /// For [`Answer::Committed`]: answers its caller as soon as the transaction has
    /// ended, before the sync.
    at_commit: Option<Finish>,
    /// Whether the command failed (its changes rolled back).
    failed: bool,
}
type ReadCmd = Box<dyn FnOnce(&Connection) + Send>;

/// Counters of the writer and syncer threads: how many transactions were committed,
/// how many commands they carried and how many syncs made them durable.
/// `commands / commits` is the group-commit factor; `commits / syncs` how many
/// transactions a sync covered.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Write commands executed.
    pub commands: AtomicU64,
    /// `fdatasync`s of the write-ahead log that returned. Every transaction committed
    /// before a sync began is durable once it returns; its callers are answered after.
    pub syncs: AtomicU64,
    /// Commands run on their caller's thread, the writer being idle (each its own
    /// transaction, counted in `commands` and `commits` too).
    pub inline: AtomicU64,
}

/// Which transactions are durable, for the readers: a read returns only once every
/// transaction it may have seen has been synced, so nothing a power loss could take
/// back is ever shown (a reader sees a commit as soon as SQLite has written it, which
/// is before its sync).
struct Durability {
    /// Number of the last transaction the writer began to commit (numbered from 1 in
    /// commit order).
    committing: AtomicU64,
    /// Highest transaction number that is durable (or ended without writing).
    durable: tokio::sync::watch::Sender<u64>,
    /// Test hook: milliseconds every sync sleeps first (a slow disk).
    #[cfg(test)]
    sync_delay_ms: AtomicU64,
}

impl Durability {
    fn new() -> Self {
        Self {
            committing: AtomicU64::new(0),
            durable: tokio::sync::watch::Sender::new(0),
            #[cfg(test)]
            sync_delay_ms: AtomicU64::new(0),
        }
    }

    /// Transactions up to `seq` are durable.
    fn mark(&self, seq: u64) {
        self.durable.send_if_modified(|d| {
            let newer = seq > *d;
            if newer {
                *d = seq;
            }
            newer
        });
    }
}

/// The embedded SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: crossbeam_channel::Sender<WriteCmd>,
    side: Arc<WriteSide>,
    readers: crossbeam_channel::Sender<ReadCmd>,
    bus: Arc<Bus>,
    stats: Arc<WriterStats>,
    durability: Arc<Durability>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string().into())
}

pub(crate) fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string().into())
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    // FULL: a commit is on disk when it returns. Migrations run so; the writer then
    // switches to NORMAL and leaves the log's sync to its syncer thread (see the crate's
    // documentation): either way nobody is answered before the sync.
    conn.pragma_update(None, "synchronous", "full")?;
    conn.pragma_update(None, "foreign_keys", "off")?;
    conn.pragma_update(None, "temp_store", "memory")?;
    // 4 MB of page cache on the writer. When a b-tree split renumbers its pages, SQLite
    // parks one at the lock-byte page's number (1 GiB), so the commit that follows walks
    // the whole page cache's hash table (pcache1Truncate): a big cache costs most commits
    // (9 % of the writer's time in a drain with 32 MB); pages it drops are still in the
    // OS page cache. The limit holds only because the build gives each connection a
    // cache of its own (no ENABLE_MEMORY_MANAGEMENT: see .cargo/config.toml).
    conn.pragma_update(None, "cache_size", -4_000)?;
    // Room for every statement the writer runs: rusqlite's default (16) is fewer than
    // the hot paths use, and an evicted statement is parsed and planned again.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies pending migrations
    /// and starts the writer and reader threads.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = Connection::open(&path).map_err(unavailable)?;
        configure(&conn).map_err(unavailable)?;
        schema::migrate(&mut conn).map_err(internal)?;

        let wal = open_wal(&conn, &path)?;
        conn.pragma_update(None, "synchronous", "normal")
            .map_err(internal)?;

        let bus = Arc::new(Bus::new());
        let stats = Arc::new(WriterStats::default());
        let durability = Arc::new(Durability::new());
        let (wtx, wrx) = crossbeam_channel::unbounded::<WriteCmd>();
        let (stx, srx) = crossbeam_channel::unbounded::<Committed>();
        let (dtx, drx) = crossbeam_channel::unbounded::<usize>();
        conn.wal_hook(Some(count_wal_frames));
        let side = Arc::new(WriteSide {
            conn: Mutex::new(conn),
            frames: AtomicI32::new(0),
            checkpoint_at: AtomicI32::new(CHECKPOINT_FRAMES),
            writing: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            sync: LogSync {
                wal: wal.try_clone().map_err(internal)?,
                stats: stats.clone(),
                durability: durability.clone(),
            },
        });
        let writer = side.clone();
        thread::Builder::new()
            .name("vow-sqlite-writer".into())
            .spawn(move || writer_loop(&writer, wrx, stx, drx))
            .map_err(internal)?;
        let syncer = LogSync {
            wal,
            stats: stats.clone(),
            durability: durability.clone(),
        };
        thread::Builder::new()
            .name("vow-sqlite-syncer".into())
            .spawn(move || syncer_loop(&syncer, srx, dtx))
            .map_err(internal)?;

        let (rtx, rrx) = crossbeam_channel::unbounded::<ReadCmd>();
        for i in 0..READERS {
            let conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(unavailable)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(internal)?;
            conn.pragma_update(None, "cache_size", -16_000)
                .map_err(internal)?;
            conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            let rrx = rrx.clone();
            thread::Builder::new()
                .name(format!("vow-sqlite-reader-{i}"))
                .spawn(move || {
                    while let Ok(cmd) = rrx.recv() {
                        cmd(&conn);
                    }
                })
                .map_err(internal)?;
        }
        Ok(Self {
            path,
            writer: wtx,
            side,
            readers: rtx,
            bus,
            stats,
            durability,
        })
    }

    /// The writer's counters.
    pub fn writer_stats(&self) -> &WriterStats {
        &self.stats
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in the next group-committed transaction, or in one of its own on the
    /// caller's thread when it is the only write under way ([`WriteSide::run_inline`]).
    /// If `f` fails, its changes are rolled back (its savepoint, or the whole
    /// transaction when it ran alone) and the others still commit. The result is
    /// returned (and its effects published) only once the commit has been synced.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &mut Effects) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        self.submit(f, true, Answer::Synced).await
    }

    /// [`SqliteStore::write`] for a command that may take long (a batch of more than
    /// [`INLINE_MAX_ITEMS`], a sweep): always run by the writer thread, never on the
    /// caller's ([`WriteSide::run_inline`]), so that its CPU time does not hold up a
    /// runtime worker. A W2 batch of 100 jobs run inline made W2 6–19 % slower.
    pub(crate) async fn write_long<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &mut Effects) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        self.submit(f, false, Answer::Synced).await
    }

    /// [`SqliteStore::write`] for a batch of `items`: long past [`INLINE_MAX_ITEMS`].
    async fn write_batch<T: Send + 'static>(
        &self,
        items: usize,
        f: impl FnOnce(&Connection, &mut Effects) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        self.submit(f, items <= INLINE_MAX_ITEMS, Answer::Synced)
            .await
    }

    /// [`SqliteStore::write`] for a lease: answered as soon as it is committed, before
    /// its sync ([`Answer::Committed`]), and always run by the writer thread, so that
    /// its caller does not wait while its own thread syncs.
    pub(crate) async fn write_lease<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &mut Effects) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        self.submit(f, false, Answer::Committed).await
    }

    /// Builds the command and has it run: inline when `short` allows and nothing else is
    /// writing, else by the writer thread. Its caller is answered when `answer` says.
    async fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &mut Effects) -> StoreResult<T> + Send + 'static,
        short: bool,
        answer: Answer,
    ) -> StoreResult<T> {
        // Counted before the check, so that `close` either waits for this write or it
        // is refused.
        let writing = Writing::new(&self.side.writing);
        if self.side.closing.load(Ordering::SeqCst) {
            return Err(unavailable(
                "the store is closing: this node is shutting down",
            ));
        }
        let (tx, rx) = oneshot::channel();
        let bus = self.bus.clone();
        let cmd: WriteCmd = Box::new(move |conn, alone| {
            let mut effects = Effects::default();
            // A panicking command (a bug) fails alone; the writer thread lives on.
            let run = |effects: &mut Effects| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    // The counts go with the jobs they count, before the command ends.
                    f(conn, effects).and_then(|v| effects.counts.write(conn).map(|()| v))
                }))
                .unwrap_or_else(|_| {
                    tracing::error!("a write command panicked; its changes are rolled back");
                    Err(internal("a write command panicked"))
                })
            };
            let out = if alone {
                // The only command of its transaction: if it fails, the writer rolls the
                // whole transaction back, so it needs no savepoint of its own (and its
                // pages are not copied into a statement journal).
                run(&mut effects)
            } else {
                match exec_cached(conn, "SAVEPOINT cmd") {
                    Err(e) => Err(internal(e)),
                    Ok(()) => {
                        let out = run(&mut effects);
                        let end = if out.is_err() {
                            exec_cached(conn, "ROLLBACK TO cmd")
                                .and_then(|()| exec_cached(conn, "RELEASE cmd"))
                        } else {
                            exec_cached(conn, "RELEASE cmd")
                        };
                        match end {
                            Ok(()) => out,
                            Err(e) => Err(internal(e)),
                        }
                    }
                }
            };
            let failed = out.is_err();
            let answer_with = move |commit: Result<(), Arc<str>>| {
                let _ = tx.send(match (commit, out) {
                    (Ok(()), out) => out,
                    (Err(e), Ok(_)) => Err(unavailable(e)),
                    (Err(_), Err(e)) => Err(e),
                });
            };
            // The effects (wake-ups, job events) are published once durable, whenever
            // the caller is answered: a stream never shows what a power loss could take
            // back, and the events go out in the order of the log.
            let publish = move |commit: &Result<(), Arc<str>>| {
                if commit.is_ok() && !failed {
                    effects.apply(&bus);
                }
            };
            match answer {
                Answer::Synced => Ran {
                    finish: Box::new(move |commit| {
                        publish(&commit);
                        answer_with(commit);
                    }),
                    at_commit: None,
                    failed,
                },
                Answer::Committed => Ran {
                    finish: Box::new(move |commit| publish(&commit)),
                    at_commit: Some(Box::new(answer_with)),
                    failed,
                },
            }
        });
        let alone = short && writing.alone() && self.writer.is_empty();
        if let Some(cmd) = self.side.run_inline(cmd, alone) {
            self.writer
                .send(cmd)
                .map_err(|_| unavailable("the writer has stopped"))?;
        }
        rx.await
            .map_err(|_| unavailable("the writer dropped the command"))?
    }

    /// Runs `f` on a reader connection, and returns once every transaction it may have
    /// seen is durable (see [`Durability`]).
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (tx, rx) = oneshot::channel();
        let durability = self.durability.clone();
        let cmd: ReadCmd = Box::new(move |conn| {
            let out = f(conn);
            // Every transaction the query may have seen began to commit before this.
            let seen = durability.committing.load(Ordering::SeqCst);
            let _ = tx.send((out, seen));
        });
        self.readers
            .send(cmd)
            .map_err(|_| unavailable("the readers have stopped"))?;
        let (out, seen) = rx
            .await
            .map_err(|_| unavailable("a reader dropped the query"))?;
        if *self.durability.durable.borrow() < seen {
            self.durability
                .durable
                .subscribe()
                .wait_for(|d| *d >= seen)
                .await
                .map_err(|_| unavailable("the writer has stopped"))?;
        }
        out
    }
}

/// Runs a parameterless statement through the statement cache (savepoints run per
/// command, so re-parsing them each time would be waste).
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Opens the write-ahead log for the syncer: its own read-only descriptor of the file
/// SQLite writes (an `fdatasync` on any descriptor flushes the file). The log lives as
/// long as a connection of this process is open, so the descriptor stays the log's.
fn open_wal(conn: &Connection, db: &Path) -> Result<std::fs::File, StoreError> {
    // A write transaction makes SQLite open (and create) the log if it has not yet.
    conn.execute_batch("BEGIN IMMEDIATE; COMMIT")
        .map_err(unavailable)?;
    // SQLite's own name for the database (symbolic links resolved): its log is there.
    let db = conn.path().filter(|p| !p.is_empty()).map_or(db, Path::new);
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    let wal = std::fs::File::open(&name).map_err(unavailable)?;
    // The log's directory entry must be durable too (SQLite syncs the directory only
    // when it syncs a new log itself).
    let dir = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Some file systems cannot sync a directory; SQLite ignores that too.
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot sync the data directory");
    }
    Ok(wal)
}

/// What the writer hands the syncer for one transaction: its number, its callers'
/// finishers, how it ended, and whether it wrote to the log (a rolled-back or failed
/// one did not).
struct Committed {
    /// The transaction's number ([`Durability`]).
    seq: u64,
    finishers: Vec<Finish>,
    outcome: Result<(), Arc<str>>,
    wrote: bool,
}

/// The write connection and what goes with it, shared by the writer thread and the
/// callers that find it idle ([`WriteSide::run_inline`]).
struct WriteSide {
    /// The only write connection; whoever holds it may run a transaction. The writer
    /// thread holds it at all times except while it waits for a command with no
    /// transaction in flight (none handed to the syncer and not yet answered), so a
    /// caller never commits while the syncer has work queued. Transactions are numbered
    /// under it ([`Durability`]), so their numbers follow the log; a sync covers every
    /// commit before it, whoever syncs.
    conn: Mutex<Connection>,
    /// Frames in the write-ahead log after the last commit ([`WAL_FRAMES`]).
    frames: AtomicI32,
    /// Log size (frames) at which the writer checkpoints next.
    checkpoint_at: AtomicI32,
    /// Callers waiting for a write ([`Writing`]).
    writing: AtomicUsize,
    /// Set by [`SqliteStore::close`]: new writes are refused.
    closing: AtomicBool,
    /// The log and the counters, for the lone transactions synced where they commit.
    sync: LogSync,
}

/// A caller waiting for a write, counted in [`WriteSide::writing`] until it is answered
/// or gone.
struct Writing<'a>(&'a AtomicUsize, usize);

impl<'a> Writing<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        // SeqCst, as `closing`: a caller either sees the store closing or is counted
        // before `close` reads the count (see `SqliteStore::submit`).
        Self(count, count.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// No other caller was waiting for a write when this one came.
    fn alone(&self) -> bool {
        self.1 == 1
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WriteSide {
    /// Runs a command as a transaction of its own on the caller's thread, when it is
    /// the only write under way (`alone`: no other caller waiting, nothing queued), the
    /// writer let go of the connection and no checkpoint is due; else gives it back,
    /// for the writer's queue.
    ///
    /// A caller sending one request at a time otherwise pays two thread hand-offs per
    /// write, to the writer thread and back, each a wake-up of a sleeping thread (about
    /// 30 µs on this VM, as much as the insert and its commit together). Here the
    /// runtime's worker blocks for the transaction and its sync instead. Only alone:
    /// concurrent writers share a sync through the writer (group commit), and a drain
    /// whose lulls ran inline lost 15–19 % to syncs not shared and a blocked worker.
    fn run_inline(&self, cmd: WriteCmd, alone: bool) -> Option<WriteCmd> {
        if !alone
            || self.frames.load(Ordering::Relaxed) >= self.checkpoint_at.load(Ordering::Relaxed)
        {
            return Some(cmd);
        }
        let conn = match self.conn.try_lock() {
            Ok(conn) => conn,
            Err(std::sync::TryLockError::WouldBlock) => return Some(cmd),
            // A command panicked while holding it; commands catch their own panics, so
            // the connection is consistent (the transaction was ended or rolled back).
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        if let Err(e) = exec_cached(&conn, "BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "cannot begin a write transaction");
            // Dropped unanswered: its caller sees `Unavailable`.
            return None;
        }
        let stats = &*self.sync.stats;
        let Ran {
            finish,
            at_commit,
            failed,
        } = cmd(&conn, true);
        stats.commands.fetch_add(1, Ordering::Relaxed);
        stats.inline.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("vow_sqlite_write_commands_total").increment(1);
        let seq = self
            .sync
            .durability
            .committing
            .fetch_add(1, Ordering::SeqCst)
            + 1;
        let (commit, wrote) = self.end_transaction(&conn, failed);
        drop(conn);
        if let Some(answer) = at_commit {
            answer(commit.clone());
        }
        if wrote {
            self.sync.log();
        }
        self.sync.durability.mark(seq);
        finish(commit);
        None
    }

    /// Ends the open transaction: rolls back a lone command that failed (it ran
    /// without a savepoint), else commits, rolling the whole back if the commit fails.
    /// Counts the commit and records the log's size if it wrote frames (SQLite's WAL
    /// hook tells the committing thread, and only when frames were written). Returns
    /// how it ended and whether it committed frames to the log.
    fn end_transaction(
        &self,
        conn: &Connection,
        lone_failed: bool,
    ) -> (Result<(), Arc<str>>, bool) {
        WAL_FRAMES.set(-1);
        let commit: Result<(), Arc<str>> = if lone_failed {
            exec_cached(conn, "ROLLBACK").map_err(|e| e.to_string().into())
        } else {
            exec_cached(conn, "COMMIT").map_err(|e| {
                let msg: Arc<str> = e.to_string().into();
                tracing::error!(error = %msg, "commit failed; rolling back the group");
                let _ = conn.execute_batch("ROLLBACK");
                msg
            })
        };
        let committed = commit.is_ok() && !lone_failed;
        if committed {
            self.sync.stats.commits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("vow_sqlite_commits_total").increment(1);
        }
        let frames = WAL_FRAMES.get();
        if frames >= 0 {
            self.frames.store(frames, Ordering::Relaxed);
        }
        // A transaction that changed nothing (a lease that found no job) wrote no frame:
        // there is nothing of it to sync.
        (commit, committed && frames >= 0)
    }
}

/// What the writer and the syncer share to make transactions durable: the log, the
/// counters, and the readers' view of what is durable.
struct LogSync {
    wal: std::fs::File,
    stats: Arc<WriterStats>,
    durability: Arc<Durability>,
}

impl LogSync {
    /// `fdatasync`s the write-ahead log: every transaction committed before the call
    /// is durable when it returns.
    fn log(&self) {
        #[cfg(test)]
        std::thread::sleep(std::time::Duration::from_millis(
            self.durability.sync_delay_ms.load(Ordering::Relaxed),
        ));
        let started = std::time::Instant::now();
        if let Err(e) = self.wal.sync_data() {
            // The kernel may have dropped the unwritten pages and a later sync could
            // then succeed without them: answering anyone from here on could be a lie.
            // Stop; a restart recovers from what is on disk.
            tracing::error!(error = %e, "fdatasync of the write-ahead log failed; aborting");
            std::process::abort();
        }
        self.stats.syncs.fetch_add(1, Ordering::Release);
        metrics::counter!("vow_sqlite_syncs_total").increment(1);
        metrics::histogram!("vow_sqlite_sync_duration_seconds")
            .record(started.elapsed().as_secs_f64());
    }
}

/// Makes committed transactions durable, in order: takes every transaction queued
/// since its last sync, syncs the log once, then answers their callers, and only then
/// tells the writer it is free (so the writer, which may answer a later transaction
/// itself, never answers it before these).
fn syncer_loop(
    sync: &LogSync,
    rx: crossbeam_channel::Receiver<Committed>,
    synced: crossbeam_channel::Sender<usize>,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        if group.iter().any(|c| c.wrote) {
            sync.log();
        }
        let n = group.len();
        if let Some(last) = group.last() {
            sync.durability.mark(last.seq);
        }
        for committed in group {
            for finish in committed.finishers {
                finish(committed.outcome.clone());
            }
        }
        let _ = synced.send(n);
    }
}

thread_local! {
    /// Frames in the write-ahead log after this thread's last commit (set by SQLite's
    /// WAL hook, which runs on the committing thread; copied to [`WriteSide::frames`]).
    static WAL_FRAMES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// Log size (frames) at which the writer checkpoints: SQLite's default.
const CHECKPOINT_FRAMES: i32 = 1_000;

/// The writer's WAL hook: records the log's size. Installing it also turns off SQLite's
/// automatic checkpoint at commit, which would run while the syncer syncs; the writer
/// checkpoints itself, between transactions ([`checkpoint`]).
fn count_wal_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(frames);
    Ok(())
}

/// Copies the log's pages into the database file (a passive checkpoint: readers are
/// never blocked; pages a reader may still need stay in the log for the next one).
/// SQLite syncs the log before and the database after. Returns the log size at which
/// to checkpoint next: the usual one if the log was copied whole (it restarts from its
/// beginning at the next commit), else another [`CHECKPOINT_FRAMES`] on top of what
/// is there, so that a reader holding an old snapshot does not make every transaction
/// wait for a checkpoint. A failure is logged and retried likewise; the log grows
/// meanwhile, nothing is lost.
fn checkpoint(conn: &Connection, frames: &AtomicI32) -> i32 {
    let started = std::time::Instant::now();
    let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    metrics::histogram!("vow_sqlite_checkpoint_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    let frames = frames.swap(0, Ordering::Relaxed);
    match r {
        Ok((_, log, done)) if log == done => CHECKPOINT_FRAMES,
        Ok((_, log, done)) => {
            tracing::debug!(
                log,
                done,
                "checkpoint incomplete: a reader still needs the log"
            );
            frames.saturating_add(CHECKPOINT_FRAMES)
        }
        Err(e) => {
            tracing::warn!(error = %e, "checkpoint failed; retrying later");
            frames.saturating_add(CHECKPOINT_FRAMES)
        }
    }
}

/// Longest the idle writer polls for the next command before it sleeps.
const SPIN: std::time::Duration = std::time::Duration::from_micros(300);

/// How long the writer has been idle between commands lately, so that it polls for the
/// next command (instead of sleeping) only when one is expected within [`SPIN`]: a
/// caller sending one request at a time then finds the writer awake, which on a VM
/// saves more than the wake-up itself (its CPU never goes idle between requests). It
/// polls with `sched_yield`, so a thread with work to do gets the core first (a plain
/// busy loop cost W3 12 % on 2 cores). Under a light load the gaps are long and the
/// writer sleeps at once, burning nothing.
#[derive(Debug, Default)]
struct IdleGaps {
    /// Moving average of the recent gaps (each new one weighs a quarter).
    average: std::time::Duration,
}

impl IdleGaps {
    /// The next command: polled for up to [`SPIN`] when the recent gaps were shorter,
    /// else (or then) waited for asleep.
    fn wait(
        &mut self,
        rx: &crossbeam_channel::Receiver<WriteCmd>,
    ) -> Result<WriteCmd, crossbeam_channel::RecvError> {
        let start = std::time::Instant::now();
        let mut got = None;
        if self.average < SPIN {
            while start.elapsed() < SPIN {
                match rx.try_recv() {
                    Ok(cmd) => {
                        got = Some(cmd);
                        break;
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => std::thread::yield_now(),
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        return Err(crossbeam_channel::RecvError)
                    }
                }
            }
        }
        let cmd = match got {
            Some(cmd) => cmd,
            None => rx.recv()?,
        };
        self.average = (self.average * 3 + start.elapsed()) / 4;
        Ok(cmd)
    }
}

/// Runs write commands in group-committed transactions and hands each committed one to
/// the syncer. While the syncer is busy, commands that arrive join the open transaction
/// (they would wait for the next sync anyway); once it is free, the writer commits and
/// hands over. So the log is synced back to back under load, each sync covering as much
/// as arrived during the previous one, and a lone command is committed at once.
fn writer_loop(
    side: &WriteSide,
    rx: crossbeam_channel::Receiver<WriteCmd>,
    syncer: crossbeam_channel::Sender<Committed>,
    synced: crossbeam_channel::Receiver<usize>,
) {
    use crossbeam_channel::{select, TryRecvError};
    let sync = &side.sync;
    let stats = &*sync.stats;
    let lock = || side.conn.lock().unwrap_or_else(|p| p.into_inner());
    let mut conn = lock();
    // Transactions handed to the syncer and not yet answered.
    let mut in_flight = 0usize;
    let mut idle = IdleGaps::default();
    loop {
        in_flight -= synced.try_iter().sum::<usize>();
        if side.frames.load(Ordering::Relaxed) >= side.checkpoint_at.load(Ordering::Relaxed) {
            // Once the syncer is done, so that the checkpoint's own syncs never overlap
            // it, and between transactions, so that the log can restart from its
            // beginning at the next commit.
            while in_flight > 0 {
                match synced.recv() {
                    Ok(n) => in_flight -= n,
                    Err(_) => return,
                }
            }
            side.checkpoint_at
                .store(checkpoint(&conn, &side.frames), Ordering::Relaxed);
        }
        let first = if in_flight == 0 {
            // Nothing in flight: a caller may take the connection meanwhile.
            drop(conn);
            let cmd = idle.wait(&rx);
            conn = lock();
            match cmd {
                Ok(cmd) => cmd,
                Err(_) => return,
            }
        } else {
            select! {
                recv(rx) -> cmd => match cmd {
                    Ok(cmd) => cmd,
                    Err(_) => return,
                },
                recv(synced) -> n => match n {
                    Ok(n) => {
                        in_flight -= n;
                        continue;
                    }
                    Err(_) => return,
                },
            }
        };
        if let Err(e) = exec_cached(&conn, "BEGIN IMMEDIATE") {
            let msg: Arc<str> = e.to_string().into();
            tracing::error!(error = %msg, "cannot begin a write transaction");
            // Dropping the command unanswered makes its caller see `Unavailable`.
            drop(first);
            continue;
        }
        // Nothing else waits and nothing is being synced: the transaction is this one
        // command, committed right after it (so it needs no savepoint).
        let alone = in_flight == 0 && rx.is_empty();
        let mut finishers: Vec<Finish> = Vec::with_capacity(if alone { 1 } else { 64 });
        // Those answered at the commit ([`Answer::Committed`]).
        let mut at_commit: Vec<Finish> = Vec::new();
        let mut failed = false;
        // Runs a command; true if its caller is to be answered at the commit, which
        // then comes as soon as the commands already queued have joined.
        let mut run = |cmd: WriteCmd| {
            let r = cmd(&conn, alone);
            failed |= r.failed;
            finishers.push(r.finish);
            let early = r.at_commit.is_some();
            at_commit.extend(r.at_commit);
            early
        };
        let mut commit_now = run(first);
        let mut ran = 1;
        while !alone && ran < MAX_GROUP {
            match rx.try_recv() {
                Ok(cmd) => {
                    commit_now |= run(cmd);
                    ran += 1;
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            in_flight -= synced.try_iter().sum::<usize>();
            if in_flight == 0 || commit_now {
                break;
            }
            // The syncer is busy: what arrives before it is free joins this transaction.
            select! {
                recv(rx) -> cmd => match cmd {
                    Ok(cmd) => {
                        commit_now |= run(cmd);
                        ran += 1;
                    }
                    Err(_) => break,
                },
                recv(synced) -> n => match n {
                    Ok(n) => in_flight -= n,
                    Err(_) => break,
                },
            }
        }
        stats.commands.fetch_add(ran as u64, Ordering::Relaxed);
        metrics::counter!("vow_sqlite_write_commands_total").increment(ran as u64);
        let seq = sync.durability.committing.fetch_add(1, Ordering::SeqCst) + 1;
        // A lone command that failed ran without a savepoint: undo whatever it wrote.
        let (commit, wrote) = side.end_transaction(&conn, alone && failed);
        let answered_early = !at_commit.is_empty();
        for answer in at_commit {
            answer(commit.clone());
        }
        if in_flight == 0 && rx.is_empty() && !answered_early {
            // Nothing waits to run and nothing is being synced, so there is nothing to
            // overlap the sync with: sync here rather than wake the syncer (one thread
            // hand-off less on every request of a lone or lightly loaded caller). Not
            // after a lease: the next one should not wait for this sync.
            if wrote {
                sync.log();
            }
            sync.durability.mark(seq);
            for finish in finishers {
                finish(commit.clone());
            }
            continue;
        }
        let committed = Committed {
            seq,
            finishers,
            outcome: commit,
            wrote,
        };
        if syncer.send(committed).is_err() {
            tracing::error!("the syncer has stopped; the writer stops too");
            return;
        }
        in_flight += 1;
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Refuses new writes (`Unavailable`), waits (up to [`CLOSE_WAIT`]) until every
    /// write under way has been answered and every command queued has been committed
    /// and synced, then checkpoints the log whole and truncates it, so that the next
    /// start has no log to read back.
    async fn close(&self) {
        self.side.closing.store(true, Ordering::SeqCst);
        let drained = tokio::time::timeout(CLOSE_WAIT, async {
            while self.side.writing.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            // Commands whose callers went away may still be queued: an empty command
            // behind them returns once they are committed and synced.
            let (tx, rx) = oneshot::channel::<()>();
            let barrier: WriteCmd = Box::new(move |_, _| {
                let finish: Finish = Box::new(move |_| {
                    let _ = tx.send(());
                });
                Ran {
                    finish,
                    at_commit: None,
                    failed: false,
                }
            });
            if self.writer.send(barrier).is_ok() {
                let _ = rx.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("writes still under way at close; the log is left to the next start");
            return;
        }
        let side = self.side.clone();
        let truncated = tokio::task::spawn_blocking(move || {
            let conn = side.conn.lock().unwrap_or_else(|p| p.into_inner());
            let r = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
            side.frames.store(0, Ordering::Relaxed);
            r
        })
        .await;
        match truncated {
            Ok(Ok(0)) => tracing::debug!("log checkpointed and truncated at close"),
            Ok(Ok(_)) => {
                tracing::info!("a reader held the log at close; it is left to the next start")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "checkpoint at close failed; the next start reads the log back")
            }
            Err(e) => tracing::warn!(error = %e, "checkpoint at close did not run"),
        }
    }

    async fn api_key_get(&self, id: &KeyId) -> StoreResult<Option<ApiKeyRecord>> {
        let id = id.clone();
        self.read(move |c| tenants::api_key_get(c, &id)).await
    }
    async fn api_key_insert(&self, p: &ApiKeyInsert) -> StoreResult<ApiKeyRecord> {
        let p = p.clone();
        self.write(move |c, _| tenants::api_key_insert(c, &p)).await
    }
    async fn api_key_list(&self, tenant_id: Option<&TenantId>) -> StoreResult<Vec<ApiKeyRecord>> {
        let t = tenant_id.cloned();
        self.read(move |c| tenants::api_key_list(c, t.as_ref()))
            .await
    }
    async fn api_key_revoke(&self, id: &KeyId, now: Timestamp) -> StoreResult<ApiKeyRecord> {
        let id = id.clone();
        self.write(move |c, _| tenants::api_key_revoke(c, &id, now))
            .await
    }

    async fn job_ack_many(&self, p: JobAckMany) -> StoreResult<Vec<StoreResult<Job>>> {
        self.write_batch(p.items.len(), move |c, fx| jobs::ack_many(c, fx, p))
            .await
    }
    async fn job_cancel(&self, p: &JobCancel) -> StoreResult<Job> {
        let p = p.clone();
        self.write(move |c, fx| jobs::cancel(c, fx, &p)).await
    }
    async fn job_event_list(
        &self,
        tenant_id: &TenantId,
        id: &JobId,
    ) -> StoreResult<Vec<JobEventView>> {
        let (t, id) = (tenant_id.clone(), id.clone());
        self.read(move |c| jobs::event_list(c, &t, &id)).await
    }
    async fn job_event_list_since(&self, p: &JobEventListSince) -> StoreResult<Vec<JobEventView>> {
        let p = p.clone();
        self.read(move |c| jobs::event_list_since(c, &p)).await
    }
    async fn job_get(&self, tenant_id: &TenantId, id: &JobId) -> StoreResult<Option<Job>> {
        let (t, id) = (tenant_id.clone(), id.clone());
        self.read(move |c| rows::job_load(c, &t, &id).map_err(internal))
            .await
    }
    async fn job_heartbeat(&self, p: JobHeartbeat) -> StoreResult<Timestamp> {
        self.write(move |c, _| jobs::heartbeat(c, p)).await
    }
    async fn job_insert_many(&self, p: JobInsertMany) -> StoreResult<Vec<Inserted>> {
        self.write_batch(p.jobs.len(), move |c, fx| jobs::insert_many(c, fx, p))
            .await
    }
    async fn job_lease(&self, p: &JobLease) -> StoreResult<Vec<Job>> {
        let p = p.clone();
        self.write_lease(move |c, fx| jobs::lease(c, fx, &p)).await
    }
    async fn job_list(&self, p: &JobList) -> StoreResult<Page<Job>> {
        let p = p.clone();
        self.read(move |c| jobs::list(c, &p)).await
    }
    async fn job_promote_due(&self, now: Timestamp) -> StoreResult<Sweep> {
        // Look first on a reader, so an idle system costs no write transactions.
        let next = self.read(jobs::next_due).await?;
        match next {
            Some(t) if t <= now => {
                self.write_long(move |c, fx| jobs::promote_due(c, fx, now))
                    .await
            }
            _ => Ok(Sweep {
                changed: 0,
                next_at: next,
            }),
        }
    }
    async fn job_prune(&self, p: &JobPrune) -> StoreResult<Pruned> {
        let p = p.clone();
        self.write_long(move |c, fx| jobs::prune(c, fx, &p)).await
    }
    async fn job_reap_expired(&self, now: Timestamp) -> StoreResult<Sweep> {
        let next = self.read(jobs::next_expiry).await?;
        match next {
            Some(t) if t <= now => {
                self.write_long(move |c, fx| jobs::reap_expired(c, fx, now))
                    .await
            }
            _ => Ok(Sweep {
                changed: 0,
                next_at: next,
            }),
        }
    }
    async fn job_retry(&self, p: &JobRetry) -> StoreResult<Job> {
        let p = p.clone();
        self.write(move |c, fx| jobs::retry(c, fx, &p)).await
    }

    async fn leader_elect(&self, _p: &LeaderElect) -> StoreResult<bool> {
        // One process owns the database file: it is always the leader.
        Ok(true)
    }
    async fn leader_resign(&self, _p: &LeaderResign) -> StoreResult<()> {
        Ok(())
    }

    async fn queue_get(
        &self,
        tenant_id: &TenantId,
        name: &QueueName,
        now: Timestamp,
    ) -> StoreResult<Option<QueueView>> {
        let (t, n) = (tenant_id.clone(), name.clone());
        self.read(move |c| tenants::queue_get(c, &t, &n, now)).await
    }
    async fn queue_list(
        &self,
        tenant_id: &TenantId,
        now: Timestamp,
    ) -> StoreResult<Vec<QueueView>> {
        let t = tenant_id.clone();
        self.read(move |c| tenants::queue_list(c, &t, now)).await
    }
    async fn queue_update(&self, p: &QueueUpdate) -> StoreResult<QueueView> {
        let p = p.clone();
        let view = self.write(move |c, _| tenants::queue_update(c, &p)).await?;
        Ok(view)
    }

    async fn ready(&self) -> StoreResult<()> {
        self.read(|c| schema::check(c).map_err(unavailable)).await?;
        // The writer and the syncer answer too (an empty transaction writes nothing).
        self.write(|_, _| Ok(())).await
    }

    async fn tenant_get(&self, id: &TenantId) -> StoreResult<Option<TenantView>> {
        let id = id.clone();
        self.read(move |c| tenants::tenant_get(c, &id)).await
    }
    async fn tenant_get_by_name(&self, name: &TenantName) -> StoreResult<Option<TenantView>> {
        let n = name.clone();
        self.read(move |c| tenants::tenant_get_by_name(c, &n)).await
    }
    async fn tenant_insert(&self, p: &TenantInsert) -> StoreResult<TenantView> {
        let p = p.clone();
        self.write(move |c, _| tenants::tenant_insert(c, &p)).await
    }
    async fn tenant_list(&self) -> StoreResult<Vec<TenantView>> {
        self.read(tenants::tenant_list).await
    }

    async fn callback_secret_exists(&self, tenant_id: &TenantId) -> StoreResult<bool> {
        let t = tenant_id.clone();
        self.read(move |c| notices::callback_secret_exists(c, &t))
            .await
    }
    async fn callback_secret_rotate(&self, p: &SecretRotate) -> StoreResult<CallbackSecretView> {
        let p = p.clone();
        self.write(move |c, _| notices::callback_secret_rotate(c, &p))
            .await
    }
    async fn delivery_claim(&self, p: &DeliveryClaim) -> StoreResult<Vec<DeliveryTask>> {
        // The dispatcher claims after every burst of completions, and most completions
        // ask for no notice: a read finds that nothing is due without a transaction on
        // the writer and its sync (about 40 a second in a drain, 5 % of its syncs).
        let now = p.now;
        if !self.read(move |c| notices::any_due(c, now)).await? {
            return Ok(Vec::new());
        }
        let p = p.clone();
        self.write_long(move |c, _| notices::delivery_claim(c, &p))
            .await
    }
    async fn delivery_get(
        &self,
        tenant_id: &TenantId,
        id: &DeliveryId,
    ) -> StoreResult<Option<DeliveryView>> {
        let (t, id) = (tenant_id.clone(), id.clone());
        self.read(move |c| notices::delivery_get(c, &t, &id)).await
    }
    async fn delivery_list(&self, p: &DeliveryList) -> StoreResult<Page<DeliveryView>> {
        let p = p.clone();
        self.read(move |c| notices::delivery_list(c, &p)).await
    }
    async fn delivery_record(&self, p: &DeliveryOutcome) -> StoreResult<()> {
        let p = p.clone();
        self.write(move |c, _| notices::delivery_record(c, &p))
            .await
    }
    async fn delivery_retry(
        &self,
        tenant_id: &TenantId,
        id: &DeliveryId,
        now: Timestamp,
    ) -> StoreResult<DeliveryView> {
        let (t, id) = (tenant_id.clone(), id.clone());
        self.write(move |c, _| notices::delivery_retry(c, &t, &id, now))
            .await
    }
    async fn webhook_delete(
        &self,
        tenant_id: &TenantId,
        id: &WebhookId,
        now: Timestamp,
    ) -> StoreResult<()> {
        let (t, id) = (tenant_id.clone(), id.clone());
        self.write(move |c, _| notices::webhook_delete(c, &t, &id, now))
            .await
    }
    async fn webhook_get(
        &self,
        tenant_id: &TenantId,
        id: &WebhookId,
    ) -> StoreResult<Option<WebhookView>> {
        let (t, id) = (tenant_id.clone(), id.clone());
        self.read(move |c| notices::webhook_get(c, &t, &id)).await
    }
    async fn webhook_insert(&self, p: &WebhookInsert) -> StoreResult<WebhookView> {
        let p = p.clone();
        self.write(move |c, _| notices::webhook_insert(c, &p)).await
    }
    async fn webhook_list(&self, tenant_id: &TenantId) -> StoreResult<Vec<WebhookView>> {
        let t = tenant_id.clone();
        self.read(move |c| notices::webhook_list(c, &t)).await
    }
    async fn webhook_secret_rotate(&self, p: &SecretRotate) -> StoreResult<WebhookView> {
        let p = p.clone();
        self.write(move |c, _| notices::webhook_secret_rotate(c, &p))
            .await
    }
}

#[cfg(test)]
mod tests {
    /// The idle writer polls only while commands have been coming quickly, and a
    /// closed channel ends its wait whether it polls or sleeps.
    #[test]
    fn the_idle_writer_polls_only_while_commands_come_quickly() {
        let noop = || -> WriteCmd {
            Box::new(|_, _| Ran {
                finish: Box::new(|_| {}),
                at_commit: None,
                failed: false,
            })
        };
        let (tx, rx) = crossbeam_channel::unbounded::<WriteCmd>();
        let mut idle = IdleGaps::default();
        assert!(idle.average < SPIN, "a new writer polls");
        tx.send(noop()).unwrap();
        assert!(idle.wait(&rx).is_ok());
        assert!(
            idle.average < SPIN,
            "a command that was waiting keeps it polling"
        );
        // Commands 20 ms apart: after a few, the writer sleeps at once.
        for _ in 0..8 {
            let tx = tx.clone();
            let send = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                tx.send(noop()).unwrap();
            });
            assert!(idle.wait(&rx).is_ok());
            send.join().unwrap();
        }
        assert!(idle.average > SPIN, "{:?}", idle.average);
        drop(tx);
        assert!(idle.wait(&rx).is_err(), "sleeping");
        let mut fresh = IdleGaps::default();
        assert!(fresh.wait(&rx).is_err(), "polling");
    }

    use super::*;

    #[tokio::test]
    async fn a_panicking_command_fails_alone_and_the_writer_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("vow.db")).unwrap();
        let boom = store
            .write(|_, _| -> StoreResult<()> { panic!("a bug") })
            .await;
        assert!(matches!(boom, Err(StoreError::Internal(_))));
        store.ready().await.expect("the writer still answers");
    }

    /// SQLite is built with a page cache per connection. With its unified cache
    /// (ENABLE_MEMORY_MANAGEMENT, which libsqlite3-sys turns on and .cargo/config.toml
    /// undefines) every page fetch takes one global mutex, and the writer's cache grows
    /// to the sum of every connection's limit, which most commits then walk whole.
    #[test]
    fn sqlite_gives_each_connection_its_own_page_cache() {
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
    }

    /// Right after the answer to write `i`: at least as many syncs have returned as
    /// transactions were committed.
    fn assert_synced(stats: &WriterStats, i: usize) {
        let syncs = stats.syncs.load(Ordering::Acquire);
        let commits = stats.commits.load(Ordering::Relaxed);
        assert!(
            syncs >= commits,
            "write {i}: {commits} commits, {syncs} syncs"
        );
    }

    /// A lease is answered once committed, before its sync, but its event is published
    /// only after the sync; a write after it is still answered only after a sync, which
    /// covers the lease too. With every sync slowed to 500 ms, the lease returns while
    /// its own sync still sleeps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_is_answered_at_its_commit_and_published_after_its_sync() {
        use vow_store_conformance::fixtures::{insert_one, lease, T0};
        let (_dir, sqlite, store, t) = store_with_tenant().await;
        insert_one(&store, &t, "q", T0).await;
        let stats = sqlite.writer_stats();
        sqlite
            .durability
            .sync_delay_ms
            .store(500, Ordering::Relaxed);
        let commits = stats.commits.load(Ordering::Acquire);
        let syncs = stats.syncs.load(Ordering::Acquire);
        let mut events = sqlite.bus().subscribe();
        let leased = lease(&store, &t, "q", 1, None, T0).await;
        assert_eq!(leased.len(), 1);
        assert_eq!(stats.commits.load(Ordering::Acquire), commits + 1);
        assert_eq!(
            stats.syncs.load(Ordering::Acquire),
            syncs,
            "the lease was answered before any sync after its commit returned"
        );
        assert!(
            events.try_recv().is_err(),
            "the leased event is not published before the sync"
        );
        insert_one(&store, &t, "q", T0).await;
        assert_synced(stats, 0);
        let first = events.try_recv().expect("published once synced");
        assert_eq!(first.event.job_id, leased[0].id);
        assert_eq!(first.event.kind, vow_core::machine::EventKind::Leased);
    }

    /// A store in a new temporary directory (kept while the first value lives), as
    /// itself and as a `dyn Store`, with a tenant `t`.
    async fn store_with_tenant() -> (
        tempfile::TempDir,
        Arc<SqliteStore>,
        vow_store_conformance::fixtures::DynStore,
        TenantId,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Arc::new(SqliteStore::open(dir.path().join("vow.db")).unwrap());
        let store: vow_store_conformance::fixtures::DynStore = sqlite.clone();
        let t = vow_store_conformance::fixtures::tenant(&store, "t").await;
        (dir, sqlite, store, t)
    }

    /// The sizes of the write-ahead log and of the database file at `path`.
    fn log_and_database_bytes(path: &Path) -> (u64, u64) {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let bytes = |p: &std::ffi::OsStr| std::fs::metadata(p).unwrap().len();
        (bytes(&wal), bytes(path.as_os_str()))
    }

    /// Writes a row of `bytes` zeros into the `scratch` table.
    async fn insert_scratch(store: &SqliteStore, bytes: usize) {
        store
            .write(move |c, _| {
                c.execute("INSERT INTO scratch (b) VALUES (zeroblob(?1))", [bytes])
                    .map_err(internal)
            })
            .await
            .unwrap();
    }

    /// Nobody hears of a write before the sync that made it durable: right after each
    /// answer, at least as many syncs have returned as transactions were committed.
    #[tokio::test]
    async fn every_answer_follows_its_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("vow.db")).unwrap();
        let stats = store.writer_stats();
        for i in 0..50 {
            store
                .write(move |c, _| {
                    c.execute(
                        "INSERT INTO tenants (id, name, created_at) VALUES (?1, ?1, 0)",
                        [format!("s{i}")],
                    )
                    .map_err(internal)
                })
                .await
                .unwrap();
            assert_synced(stats, i);
        }
        assert!(stats.commits.load(Ordering::Relaxed) >= 50);
    }

    /// A caller writing one request at a time, the writer idle, runs its transactions
    /// on its own thread; each answer still follows its sync, and the log is still
    /// checkpointed (a write that finds a checkpoint due goes to the writer, which
    /// checkpoints first), so it stays bounded though the writer thread barely runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_caller_writes_on_its_own_thread_and_the_log_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vow.db");
        let store = SqliteStore::open(&path).unwrap();
        let stats = store.writer_stats();
        store
            .write(|c, _| {
                c.execute_batch("CREATE TABLE scratch (b BLOB)")
                    .map_err(internal)
            })
            .await
            .unwrap();
        // About 4,000 pages in all: four times the checkpoint size.
        for i in 0..2_000 {
            insert_scratch(&store, 6_000).await;
            assert_synced(stats, i);
        }
        let inline = stats.inline.load(Ordering::Relaxed);
        assert!(
            inline > 1_500,
            "{inline} of 2,001 writes ran on the caller's thread"
        );
        let (wal_bytes, db_bytes) = log_and_database_bytes(&path);
        assert!(wal_bytes < 8_000_000, "the log grew to {wal_bytes} bytes");
        assert!(
            db_bytes > 8_000_000,
            "the rows reached the database: {db_bytes} bytes"
        );

        // Concurrent callers go through the writer and share its syncs.
        let (inline, syncs) = (
            stats.inline.load(Ordering::Relaxed),
            stats.syncs.load(Ordering::Relaxed),
        );
        let store = Arc::new(store);
        for _round in 0..20 {
            let writes: Vec<_> = (0..16)
                .map(|_| {
                    let store = store.clone();
                    tokio::spawn(async move { insert_scratch(&store, 100).await })
                })
                .collect();
            for w in writes {
                w.await.unwrap();
            }
        }
        let stats = store.writer_stats();
        let inline = stats.inline.load(Ordering::Relaxed) - inline;
        let syncs = stats.syncs.load(Ordering::Relaxed) - syncs;
        assert!(inline <= 60, "{inline} of 320 concurrent writes ran inline");
        assert!(syncs < 160, "320 concurrent writes took {syncs} syncs");
    }

    /// Under sustained concurrent writes the log is checkpointed and restarts from its
    /// beginning, so it stays near the checkpoint size however much is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_log_stays_bounded_under_sustained_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vow.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        store
            .write(|c, _| {
                c.execute_batch("CREATE TABLE blobs (x BLOB NOT NULL)")
                    .map_err(internal)
            })
            .await
            .unwrap();
        // 64 writers, 12,000 rows of 2 KB: about 24 MB of pages, six times the log's
        // checkpoint size.
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..(12_000 / 64) {
                    store
                        .write(|c, _| {
                            c.prepare_cached("INSERT INTO blobs (x) VALUES (zeroblob(2048))")
                                .and_then(|mut s| s.execute([]))
                                .map_err(internal)
                        })
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (wal_bytes, db_bytes) = log_and_database_bytes(&path);
        assert!(
            db_bytes > 20_000_000,
            "the rows reached the database file: {db_bytes} bytes"
        );
        // The checkpoint runs at 1,000 frames; a transaction committed on top of that
        // may add at most what 64 commands write.
        assert!(wal_bytes < 8_000_000, "the log grew to {wal_bytes} bytes");
    }

    /// A reader sees a commit as soon as SQLite has written it, before its sync; the
    /// store must not return it before the sync has returned. With every sync slowed
    /// to 100 ms, the first read that finds a concurrently written row comes after a
    /// sync.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_never_return_a_write_before_its_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("vow.db")).unwrap());
        store.durability.sync_delay_ms.store(100, Ordering::Relaxed);
        let syncs_before = store.writer_stats().syncs.load(Ordering::Acquire);
        let write = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(|c, _| {
                        c.execute(
                            "INSERT INTO tenants (id, name, created_at) VALUES ('late', 'late', 0)",
                            [],
                        )
                        .map_err(internal)
                    })
                    .await
            })
        };
        let mut reads = 0;
        loop {
            reads += 1;
            if store.read(|c| tenant_count(c, "late")).await.unwrap() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let syncs = store.writer_stats().syncs.load(Ordering::Acquire);
        assert!(
            syncs > syncs_before,
            "the row was returned by read {reads} before its sync returned"
        );
        write.await.unwrap().unwrap();
    }

    /// Closing waits for a write under way (its sync slowed to 200 ms) and answers it,
    /// refuses writes after it, and leaves the log empty; the write is there at the
    /// next open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_answers_writes_under_way_refuses_new_ones_and_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vow.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        store.durability.sync_delay_ms.store(200, Ordering::Relaxed);
        let answered = Arc::new(AtomicBool::new(false));
        let write = {
            let (store, answered) = (store.clone(), answered.clone());
            tokio::spawn(async move {
                let r = store.write(|c, _| insert_tenant(c, "late")).await;
                answered.store(true, Ordering::SeqCst);
                r
            })
        };
        while store.side.writing.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        store.close().await;
        assert!(
            answered.load(Ordering::SeqCst),
            "close returned before the write under way was answered"
        );
        write.await.unwrap().unwrap();
        let refused = store.write(|c, _| insert_tenant(c, "after")).await;
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "a write after close: {refused:?}"
        );
        let wal = std::fs::metadata(dir.path().join("vow.db-wal")).map_or(0, |m| m.len());
        assert_eq!(wal, 0, "the log still holds {wal} bytes after close");
        drop(store);
        let reopened = SqliteStore::open(&path).unwrap();
        assert_eq!(reopened.read(|c| tenant_count(c, "late")).await.unwrap(), 1);
        assert_eq!(
            reopened.read(|c| tenant_count(c, "after")).await.unwrap(),
            0
        );
    }

    /// A delivery claim that finds nothing due (the dispatcher's claim after
    /// completions that asked for no notice) commits nothing and syncs nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_with_nothing_due_takes_no_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("vow.db")).unwrap();
        let stats = store.writer_stats();
        let before = (
            stats.commits.load(Ordering::Acquire),
            stats.syncs.load(Ordering::Acquire),
        );
        let claim = DeliveryClaim {
            now: Timestamp(i64::MAX / 2),
            limit: 100,
            hold_ms: 60_000,
            breaker: Default::default(),
            per_endpoint: 100,
            in_flight: Default::default(),
        };
        assert!(store.delivery_claim(&claim).await.unwrap().is_empty());
        let after = (
            stats.commits.load(Ordering::Acquire),
            stats.syncs.load(Ordering::Acquire),
        );
        assert_eq!(after, before, "(commits, syncs) before and after the claim");
    }

    /// Listing a queue's available jobs finds the same ones, newest first, whether the
    /// queue has few (sorted from `jobs_lease`) or a backlog (walked in `jobs_queue`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn available_jobs_list_alike_with_and_without_a_backlog() {
        use vow_core::JobState;
        use vow_store_conformance::fixtures::{insert_one, lease, q, T0};
        let (_dir, sqlite, store, t) = store_with_tenant().await;
        let mut ids = Vec::new();
        for i in 0..6 {
            ids.push(insert_one(&store, &t, "q", T0.plus_ms(i)).await.id);
        }
        let leased = lease(&store, &t, "q", 2, None, T0).await;
        ids.retain(|id| leased.iter().all(|j| &j.id != id));
        ids.reverse();
        let list = || {
            let (store, t) = (store.clone(), t.clone());
            async move {
                let p = JobList {
                    tenant_id: Some(t),
                    queue: Some(q("q")),
                    state: Some(JobState::Available),
                    limit: 3,
                    ..Default::default()
                };
                let first = store.job_list(&p).await.unwrap();
                let before = first.next_cursor.map(|c| c.parse().unwrap());
                let second = store.job_list(&JobList { before, ..p }).await.unwrap();
                first
                    .items
                    .into_iter()
                    .chain(second.items)
                    .map(|j| j.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(list().await, ids, "few available: sorted from jobs_lease");
        let backlog = (jobs::SORT_AVAILABLE_UP_TO + 1) as i64;
        sqlite
            .write(move |c, _| {
                c.execute(
                    "UPDATE queue_counts SET n = ?1 WHERE state = 'available'",
                    [backlog],
                )
                .map_err(internal)
            })
            .await
            .unwrap();
        assert_eq!(list().await, ids, "a backlog: walked in jobs_queue");
    }

    fn insert_tenant(c: &Connection, name: &str) -> StoreResult<usize> {
        c.execute(
            "INSERT INTO tenants (id, name, created_at) VALUES (?1, ?1, 0)",
            [name],
        )
        .map_err(internal)
    }

    fn tenant_count(c: &Connection, name: &str) -> StoreResult<i64> {
        c.query_row(
            "SELECT count(*) FROM tenants WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .map_err(internal)
    }

    /// A command that writes and then fails leaves nothing behind, whether it ran alone
    /// (no savepoint: the transaction is rolled back) or beside others (its savepoint
    /// is), and the others in its group still commit.
    #[tokio::test]
    async fn a_failing_command_leaves_no_trace_alone_or_grouped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("vow.db")).unwrap());
        let insert_then = |name: &'static str, fail: bool| {
            let store = store.clone();
            async move {
                store
                    .write(move |c, _| {
                        c.execute(
                            "INSERT INTO tenants (id, name, created_at) VALUES (?1, ?1, 0)",
                            [name],
                        )
                        .map_err(internal)?;
                        if fail {
                            Err(StoreError::NotFound)
                        } else {
                            Ok(())
                        }
                    })
                    .await
            }
        };
        // Alone: nothing else is queued.
        assert!(matches!(
            insert_then("alone", true).await,
            Err(StoreError::NotFound)
        ));
        // Grouped: a slow command holds the writer while 64 others queue behind it, so
        // they share transactions.
        let slow = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(|_, _| {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        Ok(())
                    })
                    .await
            })
        };
        let mut tasks = Vec::new();
        for i in 0..64 {
            let name: &'static str = Box::leak(format!("t{i}").into_boxed_str());
            tasks.push(tokio::spawn(insert_then(name, i % 2 == 0)));
        }
        slow.await.unwrap().unwrap();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().is_ok(), i % 2 == 1, "command {i}");
        }
        for i in 0..64 {
            let name = format!("t{i}");
            let n = store.read(move |c| tenant_count(c, &name)).await.unwrap();
            assert_eq!(n, i64::from(i % 2 == 1), "tenant t{i}");
        }
        let n = store.read(|c| tenant_count(c, "alone")).await.unwrap();
        assert_eq!(n, 0);
        // The writer goes on after a rolled-back transaction.
        insert_then("after", false).await.unwrap();
        assert_eq!(store.read(|c| tenant_count(c, "after")).await.unwrap(), 1);
        assert!(
            store.writer_stats().commands.load(Ordering::Relaxed)
                > store.writer_stats().commits.load(Ordering::Relaxed),
            "the concurrent commands were grouped"
        );
    }
}
