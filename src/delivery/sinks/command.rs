//! `command` sinks: run a program with the event on stdin. Exit 0 is
//! success; past the timeout the program is killed and the attempt failed.

use super::{Attempt, truncate};
use crate::store::DueDelivery;
use std::process::Stdio;
use tokio::{io::AsyncWriteExt, process::Command};

pub struct CommandSink {
    program: String,
    args: Vec<String>,
}

impl CommandSink {
    pub fn new(program: String, args: Vec<String>) -> CommandSink {
        CommandSink { program, args }
    }

    pub async fn deliver(&self, delivery: &DueDelivery) -> Attempt {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env("TUNEHOOK_EVENT_ID", &delivery.event_id)
            .env("TUNEHOOK_FINETUNE_ID", &delivery.finetune_id)
            .env("TUNEHOOK_STATUS", &delivery.to_status)
            .env(
                "TUNEHOOK_PREVIOUS_STATUS",
                delivery.from_status.as_deref().unwrap_or(""),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A timed-out attempt drops the child, which kills it.
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return Attempt::failed(format!("cannot run {}: {e}", self.program)),
        };
        if let Some(mut stdin) = child.stdin.take() {
            // A program that does not read its input is fine.
            let _ = stdin.write_all(delivery.event.as_bytes()).await;
            drop(stdin);
        }
        let output = match child.wait_with_output().await {
            Ok(output) => output,
            Err(e) => return Attempt::failed(format!("waiting for {} failed: {e}", self.program)),
        };
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let code = output.status.code();
        let ok = output.status.success();
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
