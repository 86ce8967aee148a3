//! The `vow` binary: `vow serve` runs the server; the other commands are a CLI over the
//! HTTP API (through `vow-client`), and `vow worker` runs a command per job.
//!
//! Errors end here: they are printed (an API error as its stable code and detail) and
//! the process exits with status 1.

mod bench;
mod cli;
mod exec;
mod output;
mod settings;

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::FromArgMatches;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use vow_client::{Client, Worker};
use vow_core::api::{
    EnqueueRequest, JobListQuery, KeyCreate, PageQuery, QueuePatch, TenantCreate, WebhookCreate,
};
use vow_core::JobState;

use cli::{
    CallbackSecretCommand, Cli, Command, DeliveriesCommand, EnqueueArgs, JobsCommand, KeysCommand,
    QueuesCommand, TenantsCommand, WebhooksCommand, WorkerArgs,
};
use settings::KeyFile;

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `vow bench` benches an existing server only when told so on the command line.
    let url_given = matches.value_source("url") == Some(clap::parser::ValueSource::CommandLine);
    init_tracing(&cli.command);
    // The bench is a client whose own cost must not hide the server's: one thread, so
    // a request and its response never hop between threads (the server it measures is
    // another process). Everything else gets the multi-threaded runtime.
    let runtime = match cli.command {
        Command::Bench(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, url_given)) {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the default level (info for the server and
/// the worker, warnings only for one-shot commands).
fn init_tracing(command: &Command) {
    use tracing_subscriber::EnvFilter;
    let default = match command {
        Command::Serve(_) | Command::Worker(_) => "info",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Prints an error: an API problem as `error: <code>: <detail>`, anything else with
/// its chain of causes.
fn report(e: &anyhow::Error) {
    let api = e
        .chain()
        .find_map(|c| c.downcast_ref::<vow_client::Error>());
    match api.and_then(|a| a.problem()) {
        Some(p) => eprintln!("error: {}: {} (HTTP {})", p.code, p.detail, p.status),
        None => eprintln!("error: {e:#}"),
    }
}

fn client(cli: &Cli, key_file: KeyFile) -> anyhow::Result<Client> {
    let key = settings::resolve_api_key(cli.api_key.as_deref(), cli.data_dir.as_deref(), key_file)?;
    Ok(Client::new(&cli.url, &key)?)
}

async fn run(cli: Cli, url_given: bool) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Bench(args) => {
            let url = url_given.then_some(cli.url.as_str());
            let target = bench::target(args, url, || {
                settings::resolve_api_key(
                    cli.api_key.as_deref(),
                    cli.data_dir.as_deref(),
                    KeyFile::Admin,
                )
            })?;
            return bench::run(args, target).await;
        }
        Command::Serve(args) => {
            let cfg = settings::load_server_config(args, cli.data_dir.as_ref())?;
            vow_server::serve(cfg).await?;
        }
        Command::Enqueue(args) => enqueue(&cli, args).await?,
        Command::Jobs(cmd) => return jobs(&cli, cmd).await,
        Command::Queues(args) => {
            queues(&cli, args.command.as_ref().unwrap_or(&QueuesCommand::List)).await?
        }
        Command::Webhooks(args) => {
            webhooks(
                &cli,
                args.command.as_ref().unwrap_or(&WebhooksCommand::List),
            )
            .await?
        }
        Command::Deliveries(cmd) => deliveries(&cli, cmd).await?,
        Command::CallbackSecret(CallbackSecretCommand::Rotate) => {
            let c = client(&cli, KeyFile::Admin)?;
            let v = c.rotate_callback_secret().await?;
            if cli.json {
                output::json(&v)?
            } else {
                output::callback_secret(&v)
            }
        }
        Command::Tenants(cmd) => {
            let c = client(&cli, KeyFile::Root)?;
            match cmd {
                TenantsCommand::List => {
                    let items = c.tenants().await?;
                    if cli.json {
                        output::json(&items)?
                    } else {
                        output::tenants(&items)
                    }
                }
                TenantsCommand::Create { name, max_pending } => {
                    let req = TenantCreate {
                        name: name.clone(),
                        max_pending: *max_pending,
                    };
                    let t = c.create_tenant(&req).await?;
                    if cli.json {
                        output::json(&t)?
                    } else {
                        output::tenants(std::slice::from_ref(&t))
                    }
                }
            }
        }
        Command::Keys(cmd) => {
            let c = client(&cli, KeyFile::Root)?;
            match cmd {
                KeysCommand::Create { tenant, role } => {
                    let k = c.create_key(tenant, &KeyCreate { role: *role }).await?;
                    if cli.json {
                        output::json(&k)?
                    } else {
                        output::key_created(&k)
                    }
                }
                KeysCommand::List { tenant } => {
                    let items = c.keys(tenant).await?;
                    if cli.json {
                        output::json(&items)?
                    } else {
                        output::keys(&items)
                    }
                }
                KeysCommand::Revoke { key_id } => {
                    let k = c.revoke_key(key_id).await?;
                    if cli.json {
                        output::json(&k)?
                    } else {
                        output::keys(std::slice::from_ref(&k))
                    }
                }
            }
        }
        Command::Worker(args) => worker(&cli, args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the payload argument: JSON text, `-` for stdin, absent for `{}`.
fn read_payload(arg: Option<&str>) -> anyhow::Result<Value> {
    let text = match arg {
        None => return Ok(Value::Object(Default::default())),
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("could not read the payload from stdin")?;
            s
        }
        Some(s) => s.to_owned(),
    };
    serde_json::from_str(&text).context("the payload is not valid JSON")
}

/// Builds the request body from `vow enqueue`'s flags.
fn enqueue_request(args: &EnqueueArgs) -> anyhow::Result<EnqueueRequest> {
    let mut req = EnqueueRequest::new(read_payload(args.payload.as_deref())?);
    req.priority = args.priority;
    req.delay_ms = args.delay_ms;
    req.run_at = args.run_at;
    req.max_attempts = args.max_attempts;
    req.timeout_ms = args.timeout_ms;
    req.group = args.group.clone();
    req.callback_url = args.callback_url.clone();
    if !args.tags.is_empty() {
        req.tags = Some(args.tags.clone());
    }
    if let Some(m) = &args.metadata {
        let v: Value = serde_json::from_str(m).context("--metadata is not valid JSON")?;
        let Value::Object(map) = v else {
            anyhow::bail!("--metadata must be a JSON object");
        };
        req.metadata = Some(map);
    }
    Ok(req)
}

async fn enqueue(cli: &Cli, args: &EnqueueArgs) -> anyhow::Result<()> {
    let req = enqueue_request(args)?;
    let c = client(cli, KeyFile::Admin)?;
    let queue = args.queue.as_str();
    let (job, replayed) = match &args.idempotency_key {
        Some(key) => {
            let e = c.enqueue_with_key(queue, &req, key).await?;
            (e.job, e.replayed)
        }
        None => (c.enqueue(queue, &req).await?, false),
    };
    if cli.json {
        return output::json(&job);
    }
    let note = if replayed {
        " (already enqueued with this idempotency key)"
    } else {
        ""
    };
    println!("{}\t{}\t{}{note}", job.id, job.queue, job.state);
    Ok(())
}

async fn jobs(cli: &Cli, cmd: &JobsCommand) -> anyhow::Result<ExitCode> {
    let c = client(cli, KeyFile::Admin)?;
    let show = |job: &vow_core::api::JobView| -> anyhow::Result<()> {
        if cli.json {
            output::json(job)
        } else {
            output::job(job);
            Ok(())
        }
    };
    match cmd {
        JobsCommand::List(a) => {
            let q = JobListQuery {
                queue: a.queue.as_ref().map(|q| q.to_string()),
                state: a.state.map(|s| s.to_string()),
                group: a.group.as_ref().map(|g| g.to_string()),
                tag: a.tag.clone(),
                limit: a.limit.map(|l| l as usize),
                cursor: a.cursor.clone(),
            };
            let page = c.jobs(&q).await?;
            if cli.json {
                output::json(&page)?
            } else {
                output::jobs(&page.items, page.next_cursor.as_deref())
            }
        }
        JobsCommand::Get { id } => show(&c.job(id).await?)?,
        JobsCommand::Events { id } => {
            let items = c.job_events(id).await?;
            if cli.json {
                output::json(&items)?
            } else {
                output::events(&items)
            }
        }
        JobsCommand::Cancel { id } => show(&c.cancel_job(id).await?)?,
        JobsCommand::Retry { id } => show(&c.retry_job(id).await?)?,
        JobsCommand::Wait { id, timeout_ms } => {
            // The server may cap one wait; keep asking until our own deadline.
            let deadline = Instant::now() + Duration::from_millis(*timeout_ms);
            let mut job = c
                .wait_job(id, Some(Duration::from_millis(*timeout_ms)))
                .await?;
            while !job.state.is_terminal() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left < Duration::from_millis(10) {
                    break;
                }
                job = c.wait_job(id, Some(left)).await?;
            }
            show(&job)?;
            if job.state != JobState::Completed {
                if !cli.json {
                    eprintln!("job {} is {}", job.id, job.state);
                }
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn queues(cli: &Cli, cmd: &QueuesCommand) -> anyhow::Result<()> {
    let c = client(cli, KeyFile::Admin)?;
    let q = match cmd {
        QueuesCommand::List => {
            let items = c.queues().await?;
            return if cli.json {
                output::json(&items)
            } else {
                output::queues(&items);
                Ok(())
            };
        }
        QueuesCommand::Get { queue } => c.queue(queue.as_str()).await?,
        QueuesCommand::Pause { queue } | QueuesCommand::Resume { queue } => {
            let patch = QueuePatch {
                paused: Some(matches!(cmd, QueuesCommand::Pause { .. })),
                ..Default::default()
            };
            c.patch_queue(queue.as_str(), &patch).await?
        }
    };
    if cli.json {
        output::json(&q)
    } else {
        output::queue(&q);
        Ok(())
    }
}

async fn webhooks(cli: &Cli, cmd: &WebhooksCommand) -> anyhow::Result<()> {
    let c = client(cli, KeyFile::Admin)?;
    match cmd {
        WebhooksCommand::List => {
            let items = c.webhooks().await?;
            if cli.json {
                return output::json(&items);
            }
            output::webhooks(&items);
        }
        WebhooksCommand::Get { id } => {
            let w = c.webhook(id).await?;
            if cli.json {
                return output::json(&w);
            }
            output::webhook(&w);
        }
        WebhooksCommand::Create(a) => {
            let req = WebhookCreate {
                url: a.target.clone(),
                events: a.events.clone(),
                queues: (!a.queues.is_empty()).then(|| a.queues.clone()),
            };
            let w = c.create_webhook(&req).await?;
            if cli.json {
                return output::json(&w);
            }
            output::webhook_with_secret(&w);
        }
        WebhooksCommand::Delete { id } => {
            c.delete_webhook(id).await?;
            // The API answers 204 with no body: nothing to print as JSON.
            if !cli.json {
                println!("deleted {id}; its pending deliveries are now dead");
            }
        }
        WebhooksCommand::RotateSecret { id } => {
            let w = c.rotate_webhook_secret(id).await?;
            if cli.json {
                return output::json(&w);
            }
            output::webhook_with_secret(&w);
        }
        WebhooksCommand::Deliveries { id, limit, cursor } => {
            let q = PageQuery {
                limit: limit.map(|l| l as usize),
                cursor: cursor.clone(),
            };
            let page = c.webhook_deliveries(id, &q).await?;
            if cli.json {
                return output::json(&page);
            }
            output::deliveries(&page.items, page.next_cursor.as_deref());
        }
    }
    Ok(())
}

async fn deliveries(cli: &Cli, cmd: &DeliveriesCommand) -> anyhow::Result<()> {
    let c = client(cli, KeyFile::Admin)?;
    let d = match cmd {
        DeliveriesCommand::Job { job_id } => {
            let items = c.job_deliveries(job_id).await?;
            if cli.json {
                return output::json(&items);
            }
            if items.is_empty() {
                eprintln!("job {job_id} has no completion notices");
            }
            output::deliveries(&items, None);
            return Ok(());
        }
        DeliveriesCommand::Get { id } => c.delivery(id).await?,
        DeliveriesCommand::Retry { id } => c.retry_delivery(id).await?,
    };
    if cli.json {
        output::json(&d)
    } else {
        output::delivery(&d);
        Ok(())
    }
}

async fn worker(cli: &Cli, args: &WorkerArgs) -> anyhow::Result<()> {
    let c = client(cli, KeyFile::Admin)?;
    let mut w = Worker::new(c)
        .poll_wait(Duration::from_millis(args.wait_ms))
        .shutdown_grace(Duration::from_millis(args.grace_ms));
    if let Some(ms) = args.lease_ms {
        w = w.lease_ms(ms);
    }
    if let Some(id) = &args.worker_id {
        w = w.worker_id(id.clone());
    }
    let command = std::sync::Arc::new(args.command.clone());
    for queue in &args.queue {
        let command = command.clone();
        w = w.handle(queue.clone(), args.concurrency as usize, move |ctx| {
            let command = command.clone();
            async move { exec::run(&command, ctx.job()).await }
        });
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signals(shutdown.clone()));
    tracing::info!(queues = ?args.queue.iter().map(|q| q.as_str()).collect::<Vec<_>>(), command = ?args.command, "worker started");
    w.run(shutdown).await?;
    tracing::info!("worker stopped");
    Ok(())
}

/// The first SIGINT/SIGTERM starts a graceful shutdown; the second exits at once.
async fn on_signals(shutdown: CancellationToken) {
    signal().await;
    tracing::info!(
        "shutting down: no new jobs; waiting for running commands (signal again to exit now)"
    );
    shutdown.cancel();
    signal().await;
    tracing::warn!(
        "second signal: exiting now; unfinished jobs run again when their leases expire"
    );
    std::process::exit(130);
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn enqueue_flags_become_the_request() {
        let cli = Cli::try_parse_from([
            "vow",
            "enqueue",
            "q",
            r#"{"a":1}"#,
            "--tag",
            "t",
            "--metadata",
            r#"{"m":2}"#,
            "--group",
            "g",
        ])
        .unwrap();
        let Command::Enqueue(a) = cli.command else {
            panic!("not enqueue")
        };
        let req = enqueue_request(&a).unwrap();
        assert_eq!(req.payload, serde_json::json!({"a": 1}));
        assert_eq!(req.tags, Some(vec!["t".to_owned()]));
        assert_eq!(req.metadata.unwrap()["m"], 2);
        assert_eq!(req.group.unwrap().as_str(), "g");
        assert_eq!(
            req.priority, None,
            "unset flags leave the server's defaults"
        );
    }

    #[test]
    fn bad_payloads_are_explained() {
        assert_eq!(read_payload(None).unwrap(), serde_json::json!({}));
        let e = read_payload(Some("{nope")).unwrap_err();
        assert!(format!("{e:#}").contains("not valid JSON"));
        let cli = Cli::try_parse_from(["vow", "enqueue", "q", "--metadata", "[1]"]).unwrap();
        let Command::Enqueue(a) = cli.command else {
            panic!("not enqueue")
        };
        assert!(enqueue_request(&a).is_err());
    }
}
