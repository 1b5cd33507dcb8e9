//! `file` sinks: append the event as one JSON line, and fsync before the
//! attempt counts as delivered.

use super::Attempt;
use crate::store::DueDelivery;
use std::path::PathBuf;
use tokio::{io::AsyncWriteExt, sync::Mutex};

pub struct FileSink {
    path: PathBuf,
    /// One line at a time, so concurrent attempts never interleave.
    lock: Mutex<()>,
}

impl FileSink {
    pub fn new(path: PathBuf) -> FileSink {
        FileSink {
            path,
            lock: Mutex::new(()),
        }
    }

    pub async fn deliver(&self, delivery: &DueDelivery) -> Attempt {
        let _guard = self.lock.lock().await;
        match self.append(&delivery.event).await {
            Ok(()) => Attempt {
                ok: true,
                ..Attempt::default()
            },
            Err(e) => Attempt::failed(format!("cannot append to {}: {e}", self.path.display())),
        }
    }

    async fn append(&self, event: &str) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        let mut line = Vec::with_capacity(event.len() + 1);
        line.extend_from_slice(event.as_bytes());
        line.push(b'\n');
        file.write_all(&line).await?;
        file.sync_data().await
    }
}
