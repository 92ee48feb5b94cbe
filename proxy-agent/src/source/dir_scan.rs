//! Looking at every manifest file, off the daemon's loop. Inotify names the files written, but a
//! lost event, a symlink swapped under a mounted ConfigMap or a rewrite that keeps a file's size and
//! modification time (the kernel stamps mtimes from a clock that ticks every few milliseconds) would
//! go unseen without a periodic look at every file: its metadata once a second, its text on every
//! resync. At 1000 files that was 6–12 ms of `stat`s and reading on the loop, and every change
//! arriving meanwhile waited for it.

use std::{
    path::{Path, PathBuf},
    sync::{
        Weak,
        mpsc::{self, Receiver, Sender, TryRecvError},
    },
    time::SystemTime,
};

use anyhow::{Context, Result};
use tokio::sync::Notify;

/// One manifest file as a scan found it.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub path: PathBuf,
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// The hash of its text when the scan read texts (`None`: it could not be read).
    pub hash: Option<u64>,
}

/// What one scan found.
#[derive(Debug)]
pub struct Scan {
    pub files: Vec<Scanned>,
    /// The texts were read and hashed.
    pub hashed: bool,
}

pub struct DirScanner {
    requests: Sender<bool>,
    results: Receiver<Result<Scan>>,
    /// A request is out and its answer not taken yet.
    asked: bool,
}

impl DirScanner {
    /// A thread that scans the manifest files of `path` (a directory or one file) when asked, and
    /// signals `done` (the daemon's wake-up, so the result is taken without waiting for a tick).
    pub fn start(path: PathBuf, done: Option<Weak<Notify>>) -> Self {
        let (requests, asks) = mpsc::channel::<bool>();
        let (answers, results) = mpsc::channel();
        std::thread::Builder::new()
            .name("manifests-scan".into())
            .spawn(move || {
                crate::background::lower_this_thread();
                while let Ok(hash) = asks.recv() {
                    if answers.send(scan(&path, hash)).is_err() {
                        break;
                    }
                    if let Some(done) = done.as_ref().and_then(Weak::upgrade) {
                        done.notify_one();
                    }
                }
            })
            .expect("spawning the manifests scanner thread");
        Self {
            requests,
            results,
            asked: false,
        }
    }

    /// Asks for a scan (`hash`: read and hash every text too), unless one is out; a scan that
    /// hashes is not replaced by one that does not. False if the thread is gone.
    pub fn request(&mut self, hash: bool) -> bool {
        if !self.asked {
            self.asked = self.requests.send(hash).is_ok();
        }
        self.asked
    }

    /// The scan asked for, once it is there (`wait`: block until then).
    pub fn take(&mut self, wait: bool) -> Option<Result<Scan>> {
        if !self.asked {
            return None;
        }
        let answer = if wait {
            self.results.recv().ok()
        } else {
            match self.results.try_recv() {
                Ok(s) => Some(s),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => None,
            }
        };
        self.asked = false;
        Some(answer.unwrap_or_else(|| Err(anyhow::anyhow!("the manifests scanner thread is gone"))))
    }
}

fn scan(path: &Path, hash: bool) -> Result<Scan> {
    let files = list_files(path)?
        .into_iter()
        .map(|(path, len, modified)| {
            let hash = hash
                .then(|| std::fs::read_to_string(&path).ok().map(|t| text_hash(&t)))
                .flatten();
            Scanned {
                path,
                len,
                modified,
                hash,
            }
        })
        .collect();
    Ok(Scan { files, hashed: hash })
}

/// The manifest files of `path` (itself when it is a file) with their sizes and modification times,
/// in a stable order. One `stat` a file, relative to the directory, and only for names the source
/// reads; a symlink is followed (ConfigMap volumes are symlinks).
pub fn list_files(path: &Path) -> Result<Vec<(PathBuf, u64, Option<SystemTime>)>> {
    if path.is_file() {
        let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(vec![(path.to_path_buf(), meta.len(), meta.modified().ok())]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)
        .with_context(|| format!("reading manifests directory {}", path.display()))?
        .flatten()
    {
        let p = entry.path();
        if !super::manifests::is_manifest_name(&p) {
            continue;
        }
        let meta = match entry.file_type() {
            Ok(t) if t.is_symlink() => std::fs::metadata(&p),
            _ => entry.metadata(),
        };
        if let Ok(meta) = meta
            && meta.is_file()
        {
            files.push((p, meta.len(), meta.modified().ok()));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

pub fn text_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}
