//! `vow worker`'s handler: runs a command for one job and turns how it ended into an
//! [`Outcome`].
//!
//! The mapping: exit 0 → complete (stdout as the result), exit 65 (`EX_DATAERR`, "the
//! input data was incorrect") → non-retryable failure, anything else — another exit
//! code, a signal, a command that cannot be started — → retryable failure.

use std::process::Stdio;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use vow_client::Outcome;
use vow_core::api::{FailureBody, LeasedJob};

/// Exit status meaning "this job's input is bad; do not retry" (sysexits.h).
pub const EX_DATAERR: i32 = 65;
/// Most stdout kept to parse as the result; the rest is read and discarded.
pub const STDOUT_LIMIT: usize = 1024 * 1024;
/// Most text kept in `{"stdout": ...}` when stdout is not JSON.
pub const TEXT_RESULT_LIMIT: usize = 4 * 1024;
/// How much of the end of stderr becomes a failure's message.
pub const STDERR_TAIL: usize = 2 * 1024;

/// How a command ended, and what it printed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Finished {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// The first [`STDOUT_LIMIT`] bytes of stdout.
    pub stdout: Vec<u8>,
    /// Whether stdout was longer than that.
    pub stdout_truncated: bool,
    /// The last [`STDERR_TAIL`] bytes of stderr.
    pub stderr_tail: Vec<u8>,
}

/// Runs `command` (program and arguments) for `job` and maps the result.
///
/// The child is killed when this future is dropped (the worker aborts handlers that
/// outlive its shutdown grace period).
pub async fn run(command: &[String], job: &LeasedJob) -> Outcome {
    let Some((program, args)) = command.split_first() else {
        return Outcome::fail("no command given");
    };
    let mut child = match tokio::process::Command::new(program)
        .args(args)
        .env("VOW_JOB_ID", job.id.as_str())
        .env("VOW_JOB_ATTEMPT", job.attempt.to_string())
        .env("VOW_JOB_MAX_ATTEMPTS", job.max_attempts.to_string())
        .env("VOW_QUEUE", job.queue.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return Outcome::Retry {
                error: FailureBody {
                    message: format!("could not start `{program}`: {e}"),
                    code: Some("spawn_failed".into()),
                },
                after: None,
            }
        }
    };
    let payload = serde_json::to_vec(&job.payload).unwrap_or_default();
    let mut stdin = child.stdin.take();
    let feed = async move {
        if let Some(stdin) = stdin.as_mut() {
            // A command that does not read its stdin closes the pipe early; that is fine.
            let _ = stdin.write_all(&payload).await;
            let _ = stdin.shutdown().await;
        }
        drop(stdin);
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let ((), (out, truncated), err, status) = tokio::join!(
        feed,
        read_head(stdout, STDOUT_LIMIT),
        read_tail(stderr, STDERR_TAIL),
        child.wait()
    );
    let status = match status {
        Ok(s) => s,
        Err(e) => return Outcome::retry(format!("waiting for `{program}` failed: {e}")),
    };
    outcome(&Finished {
        code: status.code(),
        signal: signal_of(&status),
        stdout: out,
        stdout_truncated: truncated,
        stderr_tail: err,
    })
}

#[cfg(unix)]
fn signal_of(status: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

#[cfg(not(unix))]
fn signal_of(_: &std::process::ExitStatus) -> Option<i32> {
    None
}

/// Reads up to `limit` bytes, then drains the rest so the child never blocks on a full
/// pipe. Returns the bytes kept and whether there were more.
async fn read_head<R: AsyncRead + Unpin>(reader: Option<R>, limit: usize) -> (Vec<u8>, bool) {
    let Some(mut reader) = reader else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (kept, truncated)
}

/// Reads everything, keeping the last `limit` bytes.
async fn read_tail<R: AsyncRead + Unpin>(reader: Option<R>, limit: usize) -> Vec<u8> {
    let Some(mut reader) = reader else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > limit {
                    kept.drain(..kept.len() - limit);
                }
            }
        }
    }
    kept
}

/// Maps how a command ended to the job's outcome.
pub fn outcome(f: &Finished) -> Outcome {
    match (f.code, f.signal) {
        (Some(0), _) => Outcome::Complete(parse_result(&f.stdout, f.stdout_truncated)),
        (Some(EX_DATAERR), _) => Outcome::Fail(failure_body(
            &format!("exit status {EX_DATAERR} (EX_DATAERR)"),
            &f.stderr_tail,
            format!("exit_{EX_DATAERR}"),
        )),
        (Some(code), _) => Outcome::Retry {
            error: failure_body(
                &format!("exit status {code}"),
                &f.stderr_tail,
                format!("exit_{code}"),
            ),
            after: None,
        },
        (None, Some(sig)) => Outcome::Retry {
            error: failure_body(
                &format!("killed by signal {sig}"),
                &f.stderr_tail,
                format!("signal_{sig}"),
            ),
            after: None,
        },
        (None, None) => Outcome::Retry {
            error: failure_body(
                "ended without an exit status",
                &f.stderr_tail,
                "unknown_exit".into(),
            ),
            after: None,
        },
    }
}

fn failure_body(what: &str, stderr_tail: &[u8], code: String) -> FailureBody {
    let tail = String::from_utf8_lossy(stderr_tail);
    let tail = tail.trim();
    let message = if tail.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {tail}")
    };
    FailureBody {
        message,
        code: Some(code),
    }
}

/// The result of a successful command: stdout as JSON when it is JSON, `null` when it
/// is empty (or only whitespace), else `{"stdout": text}` with the text cut to
/// [`TEXT_RESULT_LIMIT`] bytes (and `"truncated": true` when cut).
pub fn parse_result(stdout: &[u8], truncated: bool) -> Option<Value> {
    let text = String::from_utf8_lossy(stdout);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return None;
    }
    if !truncated {
        if let Ok(v) = serde_json::from_str::<Value>(trimmed) {
            return Some(v);
        }
    }
    let mut end = trimmed.len().min(TEXT_RESULT_LIMIT);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    if truncated || end < trimmed.len() {
        Some(json!({"stdout": &trimmed[..end], "truncated": true}))
    } else {
        Some(json!({"stdout": trimmed}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(code: Option<i32>, signal: Option<i32>, stdout: &str, stderr: &str) -> Finished {
        Finished {
            code,
            signal,
            stdout: stdout.as_bytes().to_vec(),
            stdout_truncated: false,
            stderr_tail: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn exit_zero_completes_with_stdout() {
        assert_eq!(
            outcome(&finished(Some(0), None, "{\"ok\":true}\n", "noise")),
            Outcome::Complete(Some(json!({"ok": true})))
        );
        assert_eq!(
            outcome(&finished(Some(0), None, " \n", "")),
            Outcome::Complete(None)
        );
    }

    #[test]
    fn exit_65_is_dead_with_stderr_as_message() {
        let Outcome::Fail(e) = outcome(&finished(Some(65), None, "", "bad input\n")) else {
            panic!("not a fail")
        };
        assert_eq!(e.message, "exit status 65 (EX_DATAERR): bad input");
        assert_eq!(e.code.as_deref(), Some("exit_65"));
    }

    #[test]
    fn other_exits_and_signals_are_retryable() {
        let Outcome::Retry { error, after } = outcome(&finished(Some(1), None, "{}", "")) else {
            panic!("not a retry")
        };
        assert_eq!((error.message.as_str(), after), ("exit status 1", None));
        let Outcome::Retry { error, .. } = outcome(&finished(None, Some(9), "", "oom")) else {
            panic!("not a retry")
        };
        assert_eq!(error.message, "killed by signal 9: oom");
        assert_eq!(error.code.as_deref(), Some("signal_9"));
    }

    #[test]
    fn results_are_json_or_wrapped_text() {
        assert_eq!(parse_result(b"42", false), Some(json!(42)));
        assert_eq!(parse_result(b"\"s\"\n", false), Some(json!("s")));
        assert_eq!(
            parse_result(b"hello\n", false),
            Some(json!({"stdout": "hello"}))
        );
        assert_eq!(parse_result(b"", false), None);
        let long = "é".repeat(TEXT_RESULT_LIMIT);
        let v = parse_result(long.as_bytes(), false).unwrap();
        let s = v["stdout"].as_str().unwrap();
        assert!(s.len() <= TEXT_RESULT_LIMIT && s.chars().all(|c| c == 'é'));
        assert_eq!(v["truncated"], json!(true));
        // Cut-off JSON is not JSON.
        assert_eq!(
            parse_result(b"{\"a\":1}", true).unwrap()["stdout"],
            json!("{\"a\":1}")
        );
    }

    fn job(payload: Value) -> LeasedJob {
        serde_json::from_value(json!({
            "id": "job_01JD0000000000000000000000",
            "lease_id": "lease_01JD0000000000000000000000",
            "lease_expires_at": "2026-01-01T00:00:00.000Z",
            "lease_ms": 30000,
            "attempt": 2,
            "max_attempts": 5,
            "payload": payload,
            "queue": "emails",
            "priority": 5,
            "group": null,
            "metadata": {},
            "traceparent": null
        }))
        .unwrap()
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn commands_get_the_payload_and_job_environment() {
        let out = run(
            &sh(r#"p=$(cat); printf '{"p":%s,"id":"%s","attempt":%s,"q":"%s"}' "$p" "$VOW_JOB_ID" "$VOW_JOB_ATTEMPT" "$VOW_QUEUE""#),
            &job(json!({"x": 1})),
        )
        .await;
        assert_eq!(
            out,
            Outcome::Complete(Some(json!({
                "p": {"x": 1}, "id": "job_01JD0000000000000000000000", "attempt": 2, "q": "emails"
            })))
        );
    }

    #[tokio::test]
    async fn real_exit_codes_map_as_documented() {
        let out = run(&sh("echo broken >&2; exit 65"), &job(json!(null))).await;
        assert!(
            matches!(out, Outcome::Fail(ref e) if e.message.ends_with("broken")),
            "{out:?}"
        );
        let out = run(&sh("exit 3"), &job(json!(null))).await;
        assert!(matches!(out, Outcome::Retry { .. }), "{out:?}");
        let out = run(&sh("kill -9 $$"), &job(json!(null))).await;
        assert!(
            matches!(out, Outcome::Retry { ref error, .. } if error.code.as_deref() == Some("signal_9")),
            "{out:?}"
        );
        let out = run(&["/nonexistent/vow-test-cmd".to_owned()], &job(json!(null))).await;
        assert!(
            matches!(out, Outcome::Retry { ref error, .. } if error.code.as_deref() == Some("spawn_failed")),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn a_command_that_ignores_stdin_and_floods_stderr_still_finishes() {
        let out = run(
            &sh("head -c 100000 /dev/zero | tr '\\0' x >&2; exit 7"),
            &job(json!("x".repeat(200_000))),
        )
        .await;
        let Outcome::Retry { error, .. } = out else {
            panic!("not a retry")
        };
        assert!(error.message.len() <= STDERR_TAIL + 40);
    }
}
