//! The command line, as clap sees it: every command, flag and its help text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use vow_core::api::WebhookEvent;
use vow_core::auth::Role;
use vow_core::{
    DeliveryId, GroupKey, JobId, JobState, KeyId, QueueName, TenantName, Timestamp, WebhookId,
};

/// Default server URL for client commands.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7400";

/// vow: durable jobs that keep their promise.
///
/// `vow serve` runs the server; every other command talks to one over HTTP. Client
/// commands find the server through --url / VOW_URL and their API key through
/// --api-key / VOW_API_KEY, else the key file the server wrote into its data dir on
/// first start (`default-admin.key`, or `root.key` for `tenants` and `keys`).
#[derive(Debug, Parser)]
#[command(name = "vow", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Server base URL for client commands.
    #[arg(long, global = true, env = "VOW_URL", default_value = DEFAULT_URL)]
    pub url: String,

    /// API key for client commands. Without one, the key file in the data dir is used.
    #[arg(long, global = true, env = "VOW_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Data directory: the server's store and key files [default: ./vow-data].
    #[arg(long, global = true, env = "VOW_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Print raw JSON (the API's response bodies) instead of tables; for scripts.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (HTTP API, background chores) until SIGINT or SIGTERM.
    ///
    /// Settings come from flags, then VOW_* variables, then the --config file, then
    /// defaults. On first start with an empty store it creates the tenant `default` and
    /// writes `root.key` and `default-admin.key` into the data dir.
    Serve(ServeArgs),

    /// Enqueue one job and print it.
    ///
    /// Example: vow enqueue emails '{"to":"a@example.com"}' --priority 2 --tag welcome
    Enqueue(EnqueueArgs),

    /// Inspect and control jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),

    /// List queues, show one, pause or resume one (default: list).
    Queues(QueuesArgs),

    /// Subscribe to completion notices (webhooks) and inspect them (default: list).
    ///
    /// A subscription receives a signed POST (Standard Webhooks) when a job of the
    /// tenant completes, dies, is cancelled or is retried, for the events and queues it
    /// names. Its signing secret is printed once, by `create` and `rotate-secret`.
    ///
    /// Example: vow webhooks create https://example.com/hooks --event job.completed
    /// --event job.dead --queue emails
    Webhooks(WebhooksArgs),

    /// Inspect completion notices and their attempt logs; send one again.
    ///
    /// A delivery is one notice to one URL (a subscription's, or a job's own
    /// callback_url); its id (msg_…) is the `webhook-id` header the receiver sees.
    ///
    /// Example: vow deliveries job job_01JD0000000000000000000000
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),

    /// Manage the secret that signs notices sent to jobs' own callback_url.
    ///
    /// Example: vow callback-secret rotate
    #[command(subcommand)]
    CallbackSecret(CallbackSecretCommand),

    /// Create and list tenants (needs the root key).
    #[command(subcommand)]
    Tenants(TenantsCommand),

    /// Create, list and revoke API keys (needs the root key).
    #[command(subcommand)]
    Keys(KeysCommand),

    /// Run a command once per job of a queue.
    ///
    /// The job's payload (JSON) is the command's stdin; VOW_JOB_ID, VOW_JOB_ATTEMPT,
    /// VOW_JOB_MAX_ATTEMPTS and VOW_QUEUE are in its environment. Exit 0 completes the
    /// job, with stdout as its result (parsed as JSON when it is JSON, else
    /// {"stdout": "..."} cut to 4 KiB, nothing when empty). Exit 65 (EX_DATAERR) fails
    /// it for good: it becomes dead. Any other exit, or death by a signal, is a
    /// retryable failure whose message is the end of stderr. Leases are kept alive by
    /// heartbeats while the command runs. On SIGINT/SIGTERM the worker stops leasing,
    /// lets running commands finish for --grace-ms, then kills the rest and hands their
    /// jobs back for an immediate retry; a second signal exits at once.
    ///
    /// Example: vow worker --queue emails --concurrency 4 -- ./send-email.sh
    Worker(WorkerArgs),

    /// Run the BENCH.md workloads (W1-W4, W6) through the HTTP API and report the figures.
    ///
    /// By default each workload gets a fresh `vow serve` child (embedded store in a temp
    /// dir, or --store) so the server's CPU and peak RSS are measured apart from the
    /// bench's. With --url on the command line it benches that server instead (a queue
    /// of its own per workload; VOW_URL is ignored here). Sizes follow BENCH.md;
    /// BENCH_N_ENQ (W1, W2), BENCH_N_DRAIN (W3) and BENCH_N_LAT (W4) override them.
    /// Prints a table, writes JSON, and exits 1 when a workload failed or the store's
    /// final counts are wrong (lost or doubled jobs).
    ///
    /// Example: vow bench --workloads W1,W3 --out results.json
    Bench(crate::bench::BenchArgs),
}

/// `vow serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7400].
    #[arg(long, env = "VOW_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Store URL [default: SQLite in the data dir].
    #[arg(long, env = "VOW_STORE")]
    pub store: Option<String>,

    /// TOML file with any server setting (flags and VOW_* variables win over it).
    #[arg(long, value_name = "FILE", env = "VOW_CONFIG")]
    pub config: Option<PathBuf>,

    /// Plaintext root key to accept, instead of generating one. Prefer the variable:
    /// a flag shows up in the process list.
    #[arg(long, env = "VOW_ROOT_KEY", hide_env_values = true)]
    pub root_key: Option<String>,

    /// Address ranges (CIDRs, comma-separated) completion notices may reach although
    /// they are loopback, private or link-local, e.g. `10.1.0.0/16` [default: none].
    #[arg(long, env = "VOW_WEBHOOK_ALLOW_CIDRS", value_delimiter = ',')]
    pub webhook_allow_cidrs: Option<Vec<String>>,
}

/// `vow enqueue` arguments.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Queue name ([a-z0-9][a-z0-9._-]{0,63}); created on first use.
    pub queue: QueueName,

    /// Payload as JSON, or `-` to read it from stdin [default: {}].
    #[arg(value_name = "PAYLOAD_JSON")]
    pub payload: Option<String>,

    /// 0 (first) to 9 (last) [server default: 5].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub priority: Option<u8>,

    /// Do not run before now + this many milliseconds.
    #[arg(long, conflicts_with = "run_at")]
    pub delay_ms: Option<u64>,

    /// Do not run before this time (RFC 3339, e.g. 2026-01-01T09:00:00Z).
    #[arg(long, value_parser = parse_timestamp)]
    pub run_at: Option<Timestamp>,

    /// Attempts before the job is dead [server default: 25].
    #[arg(long)]
    pub max_attempts: Option<u32>,

    /// Lease length per attempt in milliseconds [server default: 30000].
    #[arg(long)]
    pub timeout_ms: Option<u64>,

    /// Fairness group key, e.g. one per end customer.
    #[arg(long)]
    pub group: Option<GroupKey>,

    /// A label for filtering; repeat for more.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,

    /// A JSON object handed to workers with the job.
    #[arg(long, value_name = "JSON")]
    pub metadata: Option<String>,

    /// URL to notify when the job is done.
    #[arg(long)]
    pub callback_url: Option<String>,

    /// Makes the enqueue safe to repeat: the same key and body return the original job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// `vow jobs …`
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first (one page; pass the printed cursor for the next).
    List(JobsListArgs),
    /// Show one job.
    Get {
        /// Job id (job_…).
        id: JobId,
    },
    /// Show a job's transitions and attempts, oldest first.
    Events {
        /// Job id (job_…).
        id: JobId,
    },
    /// Cancel a job that has not finished.
    Cancel {
        /// Job id (job_…).
        id: JobId,
    },
    /// Run a dead or cancelled job again, with its attempts reset.
    Retry {
        /// Job id (job_…).
        id: JobId,
    },
    /// Wait until a job is finished and show it.
    ///
    /// Exit status: 0 when the job completed, 2 when it ended dead or cancelled or was
    /// still unfinished after the timeout, 1 on errors.
    Wait {
        /// Job id (job_…).
        id: JobId,
        /// Longest wait in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
}

/// `vow jobs list` filters.
#[derive(Debug, Args)]
pub struct JobsListArgs {
    /// Only this queue.
    #[arg(long)]
    pub queue: Option<QueueName>,
    /// Only this state: scheduled, available, running, completed, dead or cancelled.
    #[arg(long)]
    pub state: Option<JobState>,
    /// Only this group.
    #[arg(long)]
    pub group: Option<GroupKey>,
    /// Only jobs with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Page size, at most 500 [server default: 50].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    #[arg(long)]
    pub cursor: Option<String>,
}

/// `vow queues [...]`
#[derive(Debug, Args)]
pub struct QueuesArgs {
    /// What to do with queues.
    #[command(subcommand)]
    pub command: Option<QueuesCommand>,
}

/// `vow queues …`
#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// List queues with job counts by state.
    List,
    /// Show one queue with its limits.
    Get {
        /// Queue name.
        queue: QueueName,
    },
    /// Stop handing out leases for a queue (running jobs go on).
    Pause {
        /// Queue name.
        queue: QueueName,
    },
    /// Hand out leases for a paused queue again.
    Resume {
        /// Queue name.
        queue: QueueName,
    },
}

/// `vow webhooks [...]`
#[derive(Debug, Args)]
pub struct WebhooksArgs {
    /// What to do with subscriptions.
    #[command(subcommand)]
    pub command: Option<WebhooksCommand>,
}

/// `vow webhooks …`
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List the tenant's subscriptions (never their secrets).
    ///
    /// Example: vow webhooks list
    List,
    /// Show one subscription (never its secret).
    ///
    /// Example: vow webhooks get wh_01JD0000000000000000000000
    Get {
        /// Webhook id (wh_…).
        id: WebhookId,
    },
    /// Subscribe a URL to completion notices; the signing secret is printed this once.
    ///
    /// The secret (whsec_…) is the last line on stdout; store it now, it cannot be
    /// shown again (`rotate-secret` makes a new one).
    ///
    /// Example: vow webhooks create https://example.com/hooks --event job.completed
    /// --event job.dead --queue emails
    Create(WebhookCreateArgs),
    /// Remove a subscription; its pending deliveries become dead.
    ///
    /// Example: vow webhooks delete wh_01JD0000000000000000000000
    Delete {
        /// Webhook id (wh_…).
        id: WebhookId,
    },
    /// Give a subscription a new signing secret, printed this once.
    ///
    /// The previous secret keeps signing too (a second signature) for the server's
    /// grace period (24 h by default), so receivers can switch without losing notices.
    ///
    /// Example: vow webhooks rotate-secret wh_01JD0000000000000000000000
    RotateSecret {
        /// Webhook id (wh_…).
        id: WebhookId,
    },
    /// List a subscription's deliveries, newest first (one page; pass the printed cursor
    /// for the next).
    ///
    /// Example: vow webhooks deliveries wh_01JD0000000000000000000000 --limit 20
    Deliveries {
        /// Webhook id (wh_…).
        id: WebhookId,
        /// Page size, at most 500 [server default: 50].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: Option<u32>,
        /// Cursor from the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
}

/// `vow webhooks create` arguments.
#[derive(Debug, Args)]
pub struct WebhookCreateArgs {
    /// Where notices are POSTed (http or https). A positional argument: `--url` is the
    /// vow server's address, as for every client command.
    #[arg(value_name = "URL")]
    pub target: String,

    /// A notice to receive; repeat for more.
    #[arg(long = "event", value_name = "EVENT", required = true, value_parser = event_parser())]
    pub events: Vec<WebhookEvent>,

    /// Only jobs of this queue; repeat for more [default: every queue].
    #[arg(long = "queue", value_name = "QUEUE")]
    pub queues: Vec<QueueName>,
}

/// `vow deliveries …`
#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// Show one delivery and its attempt log (status, latency, error, start of the
    /// answer).
    ///
    /// Example: vow deliveries get msg_01JD0000000000000000000000
    Get {
        /// Delivery id (msg_…).
        id: DeliveryId,
    },
    /// Send a delivery again now, with a fresh retry schedule and the same id: for a
    /// dead one, or to re-send one that was delivered.
    ///
    /// Example: vow deliveries retry msg_01JD0000000000000000000000
    Retry {
        /// Delivery id (msg_…).
        id: DeliveryId,
    },
    /// List a job's notices (its callback_url and the subscriptions it matched), newest
    /// first.
    ///
    /// Example: vow deliveries job job_01JD0000000000000000000000
    Job {
        /// Job id (job_…).
        job_id: JobId,
    },
}

/// `vow callback-secret …`
#[derive(Debug, Subcommand)]
pub enum CallbackSecretCommand {
    /// Create or rotate the tenant's callback secret; the new one is printed this once.
    ///
    /// The secret (whsec_…) is the last line on stdout; store it now, it cannot be
    /// shown again. The previous one keeps signing too (a second signature) until the
    /// time printed, so receivers can switch without losing notices.
    ///
    /// Example: vow callback-secret rotate
    Rotate,
}

/// `vow tenants …`
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// List tenants.
    List,
    /// Create a tenant (then give it keys with `vow keys create`).
    Create {
        /// Unique name ([a-z0-9][a-z0-9._-]{0,63}).
        name: TenantName,
        /// Quota of pending jobs across the tenant's queues.
        #[arg(long)]
        max_pending: Option<u64>,
    },
}

/// `vow keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key; the key is printed this once and cannot be shown again.
    Create {
        /// Tenant name or id.
        #[arg(long)]
        tenant: String,
        /// admin, producer or worker.
        #[arg(long)]
        role: Role,
    },
    /// List a tenant's keys (never their secrets).
    List {
        /// Tenant name or id.
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key at once.
    Revoke {
        /// Key id (key_…).
        key_id: KeyId,
    },
}

/// `vow worker` arguments.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Queue to take jobs from; repeat for several (each gets --concurrency slots).
    #[arg(long, required = true)]
    pub queue: Vec<QueueName>,

    /// Commands to run at once per queue.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,

    /// Lease length in milliseconds [default: each job's timeout_ms].
    #[arg(long)]
    pub lease_ms: Option<u64>,

    /// How long one lease request waits for a job on the server, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub wait_ms: u64,

    /// How long running commands may finish after SIGINT/SIGTERM, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub grace_ms: u64,

    /// Name recorded as the lease holder [default: <hostname>/pid-<pid>].
    #[arg(long)]
    pub worker_id: Option<String>,

    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The wire names of the notice events, listed in `--help` and checked by the parser.
fn event_parser() -> impl TypedValueParser<Value = WebhookEvent> {
    PossibleValuesParser::new(["job.completed", "job.dead", "job.cancelled", "job.retrying"])
        .try_map(|s| serde_json::from_value::<WebhookEvent>(serde_json::Value::String(s)))
}

fn parse_timestamp(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(s)
        .ok_or_else(|| format!("`{s}` is not an RFC 3339 time such as 2026-01-01T09:00:00Z"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vow").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn enqueue_takes_all_its_options() {
        let cli = parse(&[
            "enqueue",
            "emails",
            r#"{"a":1}"#,
            "--priority",
            "2",
            "--delay-ms",
            "500",
            "--max-attempts",
            "3",
            "--timeout-ms",
            "1000",
            "--group",
            "cust-1",
            "--tag",
            "x",
            "--tag",
            "y",
            "--idempotency-key",
            "k1",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Enqueue(a) = cli.command else {
            panic!("not enqueue")
        };
        assert_eq!(a.queue.as_str(), "emails");
        assert_eq!(a.payload.as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(
            (a.priority, a.delay_ms, a.max_attempts),
            (Some(2), Some(500), Some(3))
        );
        assert_eq!(a.tags, ["x", "y"]);
        assert_eq!(a.idempotency_key.as_deref(), Some("k1"));
    }

    #[test]
    fn bad_input_is_rejected_by_the_parser() {
        assert!(parse(&["enqueue", "Bad Queue"]).is_err());
        assert!(parse(&["enqueue", "q", "--priority", "10"]).is_err());
        assert!(parse(&[
            "enqueue",
            "q",
            "--delay-ms",
            "1",
            "--run-at",
            "2026-01-01T00:00:00Z"
        ])
        .is_err());
        assert!(parse(&["enqueue", "q", "--run-at", "tomorrow"]).is_err());
        assert!(parse(&["jobs", "get", "not-an-id"]).is_err());
        assert!(parse(&["jobs", "list", "--state", "sleeping"]).is_err());
        assert!(parse(&["keys", "create", "--tenant", "t", "--role", "god"]).is_err());
    }

    #[test]
    fn run_at_is_parsed() {
        let cli = parse(&["enqueue", "q", "--run-at", "2026-01-01T00:00:00.123Z"]).unwrap();
        let Command::Enqueue(a) = cli.command else {
            panic!("not enqueue")
        };
        assert_eq!(a.run_at, Some(Timestamp(1_767_225_600_123)));
    }

    #[test]
    fn queues_defaults_to_list() {
        let cli = parse(&["queues"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Queues(QueuesArgs { command: None })
        ));
        let cli = parse(&["queues", "pause", "emails"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Queues(QueuesArgs {
                command: Some(QueuesCommand::Pause { .. })
            })
        ));
    }

    #[test]
    fn webhooks_default_to_list_and_create_takes_events_and_queues() {
        let cli = parse(&["webhooks"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Webhooks(WebhooksArgs { command: None })
        ));
        let cli = parse(&[
            "webhooks",
            "create",
            "https://example.com/h",
            "--event",
            "job.completed",
            "--event",
            "job.dead",
            "--event",
            "job.cancelled",
            "--event",
            "job.retrying",
            "--queue",
            "emails",
        ])
        .unwrap();
        let Command::Webhooks(WebhooksArgs {
            command: Some(WebhooksCommand::Create(a)),
        }) = cli.command
        else {
            panic!("not webhooks create")
        };
        assert_eq!(a.target, "https://example.com/h");
        assert_eq!(
            a.events,
            [
                WebhookEvent::JobCompleted,
                WebhookEvent::JobDead,
                WebhookEvent::JobCancelled,
                WebhookEvent::JobRetrying
            ]
        );
        assert_eq!(a.queues.len(), 1);
        assert_eq!(cli.url, DEFAULT_URL, "the target is not the server");
        assert!(parse(&["webhooks", "create", "https://x"]).is_err());
        assert!(parse(&["webhooks", "create", "https://x", "--event", "job.done"]).is_err());
        // `--url` stays the server's address, wherever it is given.
        let cli = parse(&[
            "webhooks",
            "create",
            "https://hook.example/x",
            "--event",
            "job.dead",
            "--url",
            "http://vow:7400",
        ])
        .unwrap();
        assert_eq!(cli.url, "http://vow:7400");
        let Command::Webhooks(WebhooksArgs {
            command: Some(WebhooksCommand::Create(a)),
        }) = cli.command
        else {
            panic!("not webhooks create")
        };
        assert_eq!(a.target, "https://hook.example/x");
        assert!(parse(&["webhooks", "get", "job_01JD0000000000000000000000"]).is_err());
        assert!(parse(&[
            "webhooks",
            "deliveries",
            "wh_01JD0000000000000000000000",
            "--limit",
            "0"
        ])
        .is_err());
        assert!(parse(&["deliveries", "get", "wh_01JD0000000000000000000000"]).is_err());
        assert!(parse(&["deliveries", "job", "job_01JD0000000000000000000000"]).is_ok());
        assert!(matches!(
            parse(&["callback-secret", "rotate"]).unwrap().command,
            Command::CallbackSecret(CallbackSecretCommand::Rotate)
        ));
    }

    #[test]
    fn worker_needs_a_queue_and_a_command_after_the_separator() {
        let cli = parse(&[
            "worker",
            "--queue",
            "q",
            "--concurrency",
            "3",
            "--",
            "sh",
            "-c",
            "exit 65",
        ])
        .unwrap();
        let Command::Worker(w) = cli.command else {
            panic!("not worker")
        };
        assert_eq!(w.concurrency, 3);
        assert_eq!(w.command, ["sh", "-c", "exit 65"]);
        assert!(parse(&["worker", "--queue", "q"]).is_err());
        assert!(parse(&["worker", "--", "true"]).is_err());
        assert!(parse(&["worker", "--queue", "q", "--concurrency", "0", "--", "true"]).is_err());
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&[
            "jobs",
            "list",
            "--url",
            "http://x:1",
            "--api-key",
            "k",
            "--data-dir",
            "/d",
        ])
        .unwrap();
        assert_eq!(cli.url, "http://x:1");
        assert_eq!(cli.api_key.as_deref(), Some("k"));
        assert_eq!(cli.data_dir, Some(PathBuf::from("/d")));
    }

    #[test]
    fn serve_flags_parse() {
        let cli = parse(&[
            "serve",
            "--listen",
            "0.0.0.0:9000",
            "--store",
            "sqlite:",
            "--config",
            "v.toml",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.listen, Some("0.0.0.0:9000".parse().unwrap()));
        assert_eq!(s.store.as_deref(), Some("sqlite:"));
        assert!(parse(&["serve", "--listen", "nowhere"]).is_err());
    }
}
