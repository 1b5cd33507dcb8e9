//! `file` sinks: append the event as one JSON line, and fsync before the
//! attempt counts as delivered.
//!
//! A reader of the file must be able to trust every line, so an append is
//! all or nothing: the line goes out in one write, and when the write or the
//! fsync fails the file is cut back to its length before it, so the retry
//! does not follow half a line. A fragment that a crash left mid-write (no
//! chance to cut it back) is ended with a newline before the next line, so
//! that line stays whole. When the file is created, its folder is fsynced
//! too: otherwise a power loss could forget the file and every line in it.

use super::Attempt;
use crate::store::DueDelivery;
use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::FileExt,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};
use tokio::sync::Mutex;

pub struct FileSink {
    path: Arc<PathBuf>,
    /// One line at a time, so concurrent attempts never interleave.
    lock: Mutex<()>,
}

impl FileSink {
    pub fn new(path: PathBuf) -> FileSink {
        FileSink {
            path: Arc::new(path),
            lock: Mutex::new(()),
        }
    }

    pub async fn deliver(&self, delivery: &DueDelivery) -> Attempt {
        let _guard = self.lock.lock().await;
        let path = Arc::clone(&self.path);
        let event = delivery.event.clone();
        let result = tokio::task::spawn_blocking(move || append(&path, &event))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
        match result {
            Ok(()) => Attempt {
                ok: true,
                ..Attempt::default()
            },
            Err(e) => Attempt::failed(format!("cannot append to {}: {e}", self.path.display())),
        }
    }
}

/// Appends `event` and a newline to the file at `path`, creating it (and
/// its folders) when missing, and makes it durable.
fn append(path: &Path, event: &str) -> io::Result<()> {
    let mut file = open(path)?;
    append_line(&mut file, event.as_bytes())
}

/// Opens the file for appending. When this call creates it, the folders
/// whose entries it added (the file's, and those above any folder it made)
/// are fsynced before the file is used.
fn open(path: &Path) -> io::Result<File> {
    let options = || {
        let mut options = OpenOptions::new();
        options.read(true).append(true);
        options
    };
    match options().open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        opened => return opened,
    }
    let dir = parent(path).unwrap_or(Path::new("."));
    let mut changed = vec![dir];
    let mut missing = dir;
    while !missing.exists() {
        missing = parent(missing).unwrap_or(Path::new("."));
        changed.push(missing);
    }
    std::fs::create_dir_all(dir)?;
    // Events carry every job's fields: readable by tunehook's user alone,
    // like the database.
    let file = match options().create_new(true).mode(0o600).open(path) {
        // Created by someone else meanwhile: theirs to have made durable.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return options().open(path),
        created => created?,
    };
    for dir in changed {
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
}

/// The folder holding `path`, when it names one (`events.jsonl` has none).
fn parent(path: &Path) -> Option<&Path> {
    path.parent().filter(|d| !d.as_os_str().is_empty())
}

/// What an append needs of a file: a seam so that the rule below can be
/// checked against a write that fails halfway.
trait LineFile: Write {
    fn len(&self) -> io::Result<u64>;
    fn last_byte(&self, len: u64) -> io::Result<u8>;
    fn sync(&self) -> io::Result<()>;
    fn cut_to(&self, len: u64) -> io::Result<()>;
}

impl LineFile for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn last_byte(&self, len: u64) -> io::Result<u8> {
        let mut byte = [0u8];
        self.read_exact_at(&mut byte, len - 1)?;
        Ok(byte[0])
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn cut_to(&self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        self.sync_data()
    }
}

/// Appends `line` and a newline in one write and syncs; on failure, cuts
/// the file back to where it was, so it never ends in part of this line.
fn append_line(file: &mut impl LineFile, line: &[u8]) -> io::Result<()> {
    let before = file.len()?;
    let mut bytes = Vec::with_capacity(line.len() + 2);
    if before > 0 && file.last_byte(before)? != b'\n' {
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(line);
    bytes.push(b'\n');
    let written = file.write_all(&bytes).and_then(|()| file.sync());
    if let Err(e) = written {
        return match file.cut_to(before) {
            Ok(()) => Err(e),
            Err(cut) => Err(io::Error::new(
                e.kind(),
                format!("{e}; and cutting back the partial line failed: {cut}"),
            )),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real file whose writes stop after `allowed` bytes with an error,
    /// as a full disk does.
    struct FillsUp {
        file: File,
        allowed: usize,
    }

    impl Write for FillsUp {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.allowed == 0 {
                return Err(io::Error::from_raw_os_error(28));
            }
            let n = buf.len().min(self.allowed);
            self.allowed -= n;
            self.file.write(&buf[..n])
        }

        fn flush(&mut self) -> io::Result<()> {
            self.file.flush()
        }
    }

    impl LineFile for FillsUp {
        fn len(&self) -> io::Result<u64> {
            self.file.len()
        }
        fn last_byte(&self, len: u64) -> io::Result<u8> {
            self.file.last_byte(len)
        }
        fn sync(&self) -> io::Result<()> {
            self.file.sync()
        }
        fn cut_to(&self, len: u64) -> io::Result<()> {
            self.file.cut_to(len)
        }
    }

    #[test]
    fn a_write_that_fails_halfway_leaves_the_file_as_it_was() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("events.jsonl");
        append(&path, r#"{"n":1}"#).expect("first line");
        let file = open(&path).expect("open");
        let mut full = FillsUp { file, allowed: 5 };
        let error = append_line(&mut full, br#"{"n":2,"long":"xxxxxxxxxxxx"}"#)
            .expect_err("the disk is full");
        assert_eq!(error.raw_os_error(), Some(28));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "{\"n\":1}\n",
            "no part of the failed line is left"
        );
        append(&path, r#"{"n":3}"#).expect("the retry");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "{\"n\":1}\n{\"n\":3}\n"
        );
    }

    #[test]
    fn a_fragment_left_by_a_crash_is_ended_before_the_next_line() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"n\":1}\n{\"n\":").expect("write");
        append(&path, r#"{"n":2}"#).expect("append");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "{\"n\":1}\n{\"n\":\n{\"n\":2}\n");
    }

    #[test]
    fn the_file_and_its_folders_are_created_on_first_append() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a/b/events.jsonl");
        append(&path, "{}").expect("append");
        append(&path, "[]").expect("append");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "{}\n[]\n");
    }
}
