//! Wakes the daemon when a manifest file is written, renamed into place or removed (inotify on the
//! directory), so a change reaches the maps without waiting for the next tick. The periodic poll
//! stays the authority on what changed: this says when to look, and which names to look at first
//! (a pass after a write reads that file's metadata, not every file's: 1000 `stat`s were most of what
//! a one-file change cost).

use std::{
    collections::BTreeSet,
    ffi::OsString,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::Notify;

pub struct FileWatch {
    /// Signalled by the reader thread; holds one permit while nobody waits, so a change between two
    /// waits is not lost.
    notify: Arc<Notify>,
    dirty: Arc<Mutex<Dirty>>,
}

/// Names written since the last [`FileWatch::take_dirty`].
#[derive(Debug, Default)]
struct Dirty {
    names: BTreeSet<OsString>,
    /// The kernel dropped events (queue overflow): any file may have changed.
    overflow: bool,
}

impl FileWatch {
    /// Watches `path`'s directory (or `path` itself when it is one) from a thread of its own that
    /// blocks on the inotify descriptor (the crate forbids the `unsafe` that registering a raw
    /// descriptor with Tokio takes).
    pub fn new(path: &Path) -> Result<Self> {
        let (dir, only) = if path.is_dir() {
            (path, None)
        } else {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            (dir, path.file_name().map(ToOwned::to_owned))
        };
        // Only names the source reads wake it: a temporary file written before a rename into place
        // would otherwise start a pass that finds nothing and delays the one the rename asks for.
        let relevant = move |name: &std::ffi::OsStr| match &only {
            Some(file) => name == file,
            None => super::manifests::is_manifest_name(Path::new(name)),
        };
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC).context("inotify_init for the manifests")?;
        // A whole write (close after writing), a rename into place (editors and tools write a
        // temporary file and rename it), a new or removed file.
        let events = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE;
        inotify
            .add_watch(dir, events)
            .with_context(|| format!("watching {} with inotify", dir.display()))?;
        let notify = Arc::new(Notify::new());
        let signal = notify.clone();
        let dirty = Arc::new(Mutex::new(Dirty::default()));
        let record = dirty.clone();
        std::thread::Builder::new()
            .name("manifests-inotify".into())
            .spawn(move || {
                // Ends with the first event after the watch is dropped.
                while Arc::strong_count(&signal) > 1 {
                    match inotify.read_events() {
                        Ok(events) => {
                            let mut wake = false;
                            {
                                let mut d = record.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                                for e in &events {
                                    if e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                                        d.overflow = true;
                                        wake = true;
                                    }
                                    if let Some(name) = e.name.as_deref().filter(|n| relevant(n)) {
                                        d.names.insert(name.to_owned());
                                        wake = true;
                                    }
                                }
                            }
                            if wake {
                                signal.notify_one();
                            }
                        }
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "reading inotify events; the periodic poll stays");
                            return;
                        }
                    }
                }
            })
            .context("starting the inotify reader thread")?;
        Ok(Self { notify, dirty })
    }

    /// The names written since the last call; `None` when events were lost and every file must be
    /// looked at.
    pub fn take_dirty(&self) -> Option<BTreeSet<OsString>> {
        let mut d = self
            .dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let names = std::mem::take(&mut d.names);
        (!std::mem::take(&mut d.overflow)).then_some(names)
    }

    /// What wakes [`Self::changed`], for others with news of the directory (the scanner).
    pub fn signal(&self) -> std::sync::Weak<Notify> {
        Arc::downgrade(&self.notify)
    }

    /// Waits until something happened in the directory since the last call.
    pub async fn changed(&mut self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_file_renamed_into_place_wakes_the_watch_and_other_names_do_not() {
        let dir = std::env::temp_dir().join(format!("strait-file-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut watch = FileWatch::new(&dir).unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
        assert!(quiet.is_err(), "nothing happened yet");
        std::fs::write(dir.join(".x.tmp"), "kind: Namespace\n").unwrap();
        let tmp = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
        assert!(tmp.is_err(), "a file the source does not read wakes nothing");
        std::fs::rename(dir.join(".x.tmp"), dir.join("x.yaml")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the rename wakes the watch");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
