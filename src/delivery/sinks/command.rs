//! `command` sinks: run a program with the event on stdin. Exit 0 is
//! success; past the timeout the program is killed and the attempt failed.
//!
//! The program is someone else's code, so it gets only what it needs: an
//! environment cleared down to a few harmless variables (tunehook's own
//! holds the API token, the ingest token and the Segmind key), the event's
//! variables and the sink's `env` table. It runs in a process group of its
//! own, and when the attempt ends (the program exited, or the timeout
//! dropped the attempt) the whole group is killed, so a background child
//! cannot outlive it. Its input is written while its output is read, so
//! neither side can block the other on a full pipe; at most
//! [`RESPONSE_LIMIT`](super::RESPONSE_LIMIT) bytes of each stream are kept
//! and the rest read and thrown away. A background child that holds the
//! pipes open after the program exited is given [`PIPE_GRACE`], not the
//! whole timeout.

use super::{Attempt, RESPONSE_LIMIT, truncate};
use crate::store::DueDelivery;
use std::{process::Stdio, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::{ChildStdin, Command},
};

/// The variables passed on from tunehook's environment, when set.
pub const PASSED_THROUGH: [&str; 5] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ"];

/// How long output pipes may stay open once the program has exited.
pub const PIPE_GRACE: Duration = Duration::from_millis(250);

pub struct CommandSink {
    program: String,
    args: Vec<String>,
    /// The sink's own `env` table.
    env: Vec<(String, String)>,
}

/// Kills a process group when dropped: at the end of every attempt,
/// including one dropped at its timeout.
struct Group(Option<rustix::process::Pid>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // Fails with ESRCH when nothing of the group is left: fine.
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

impl CommandSink {
    pub fn new(program: String, args: Vec<String>, env: Vec<(String, String)>) -> CommandSink {
        CommandSink { program, args, env }
    }

    fn command(&self, delivery: &DueDelivery) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args).env_clear();
        for name in PASSED_THROUGH {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        // Validation keeps the table off the TUNEHOOK_ names set below.
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
            .env("TUNEHOOK_EVENT_ID", &delivery.event_id)
            .env("TUNEHOOK_FINETUNE_ID", &delivery.finetune_id)
            .env("TUNEHOOK_STATUS", &delivery.to_status)
            // Empty for an event that is not a status change.
            .env(
                "TUNEHOOK_PREVIOUS_STATUS",
                delivery.from_status.as_deref().unwrap_or(""),
            )
            .env("TUNEHOOK_EVENT_TYPE", &delivery.event_type);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        command
    }

    pub async fn deliver(&self, delivery: &DueDelivery) -> Attempt {
        let mut child = match self.command(delivery).spawn() {
            Ok(child) => child,
            Err(e) => return Attempt::failed(format!("cannot run {}: {e}", self.program)),
        };
        // When the timeout drops this attempt, `group` (declared after
        // `child`) is dropped first: the group is killed while its leader is
        // not yet reaped, so its id cannot have been reused.
        let group = Group(
            child
                .id()
                .and_then(|pid| i32::try_from(pid).ok())
                .and_then(rustix::process::Pid::from_raw),
        );
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (status, pipes_closed) = {
            let io = async {
                tokio::join!(
                    feed(stdin, delivery.event.as_bytes()),
                    keep(stdout, &mut out),
                    keep(stderr, &mut err)
                )
            };
            let mut io = std::pin::pin!(io);
            let mut io_done = false;
            let status = loop {
                tokio::select! {
                    _ = &mut io, if !io_done => io_done = true,
                    status = child.wait() => break status,
                }
            };
            if !io_done {
                io_done = tokio::time::timeout(PIPE_GRACE, &mut io).await.is_ok();
            }
            (status, io_done)
        };
        drop(group);
        if !pipes_closed {
            tracing::warn!(
                program = %self.program,
                "the program exited but left processes holding its output open; they were killed"
            );
        }
        let status = match status {
            Ok(status) => status,
            Err(e) => return Attempt::failed(format!("waiting for {} failed: {e}", self.program)),
        };
        let mut text = String::from_utf8_lossy(&out).into_owned();
        text.push_str(&String::from_utf8_lossy(&err));
        let code = status.code();
        let ok = status.success();
        Attempt {
            ok,
            exit_code: code,
            error: (!ok).then(|| match code {
                Some(code) => format!("exited with {code}"),
                None => "killed by a signal".to_owned(),
            }),
            response: Some(truncate(text)),
            ..Attempt::default()
        }
    }
}

/// Writes the event to the program's input, then closes it. A program that
/// does not read its input (a closed pipe) is fine.
async fn feed(stdin: Option<ChildStdin>, event: &[u8]) {
    if let Some(mut stdin) = stdin {
        let _ = stdin.write_all(event).await;
    }
}

/// Reads `reader` to its end, keeping its first `RESPONSE_LIMIT` bytes.
async fn keep(reader: Option<impl AsyncRead + Unpin>, kept: &mut Vec<u8>) {
    let Some(mut reader) = reader else { return };
    let mut buffer = [0u8; 8192];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = RESPONSE_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}
