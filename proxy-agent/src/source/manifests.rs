//! Standalone source: Kubernetes objects from YAML files (one file or every `*.yaml`/`*.yml`/`*.json` in a
//! directory), re-read when a file changes. An object the agent cannot use is reported with its
//! kind/namespace/name and skipped; the rest keeps working.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use anyhow::{Context, Result};

use super::kube::strip::Strip;
use crate::snapshot::Snapshot;

pub use super::Rejected;
use super::{
    Kinds, Update,
    dir_scan::{DirScanner, list_files, text_hash},
};

/// Re-reads the files that change (or all of them when a resync asks for it). Each file's objects
/// are one run per kind in the caller's snapshot, in file order, so editing one file costs parsing
/// that file and moving its runs into place, not parsing or copying the whole directory: at 100k
/// endpoints a copy of every object is tens of milliseconds, and YAML parsing far more.
pub struct ManifestsSource {
    path: PathBuf,
    files: BTreeMap<PathBuf, ParsedFile>,
    /// The sum of `files`' counts (summing a thousand records on every poll was a tenth of a
    /// millisecond before each change).
    totals: Counts,
    loaded: bool,
    /// Looks at every file off the caller's loop (started at the first scan of a directory).
    scanner: Option<DirScanner>,
    /// A resync asked for every text to be hashed and no scan has done it yet.
    hash_wanted: bool,
    /// Signalled when a scan is done.
    scan_done: Option<std::sync::Weak<tokio::sync::Notify>>,
}

struct ParsedFile {
    len: u64,
    modified: Option<SystemTime>,
    /// How many objects of each kind the file holds (its runs in the snapshot).
    counts: Counts,
    /// Of the text last parsed: a resync reads every file again but parses only those whose text
    /// changed (parsing every file is seconds at 100k endpoints; reading and hashing, milliseconds).
    hash: u64,
    /// Of each document of that text, its hash with the kind of the one object it gave in the low
    /// bits ([`DocumentHashes`]): when the file is rewritten, documents whose text is unchanged keep
    /// their objects (the same allocations, so downstream sees them unchanged) instead of being parsed
    /// again. Editing one Service in a file of a thousand costs one document's parse. Empty when the
    /// file's objects cannot be placed by document (a `List` document).
    documents: Box<[u64]>,
    rejected: Vec<Rejected>,
    /// A resync found text that differs from what was parsed: read again whatever the metadata says.
    suspect: bool,
}

impl ParsedFile {
    /// What the last parse of a file left for the next one (its text's hash, its documents'): none
    /// without a record.
    fn last_parse(record: Option<&Self>) -> (Option<u64>, &[u64]) {
        record.map_or((None, &[]), |f| (Some(f.hash), &f.documents))
    }

    fn unchanged(&self, len: u64, modified: Option<SystemTime>) -> bool {
        !self.suspect && self.len == len && self.modified == modified
    }
}

/// Objects per kind, in [`Snapshot`]'s field order.
type Counts = [usize; 6];

fn counts(s: &Snapshot) -> Counts {
    [
        s.nodes.len(),
        s.namespaces.len(),
        s.pods.len(),
        s.services.len(),
        s.endpoint_slices.len(),
        s.network_policies.len(),
    ]
}

const KIND_OF_COUNT: [Kinds; 6] = [
    Kinds::NODES,
    Kinds::NAMESPACES,
    Kinds::PODS,
    Kinds::SERVICES,
    Kinds::ENDPOINT_SLICES,
    Kinds::NETWORK_POLICIES,
];

fn kinds_present(c: &Counts) -> Kinds {
    let mut k = Kinds::NONE;
    for (n, kind) in c.iter().zip(KIND_OF_COUNT) {
        if *n > 0 {
            k |= kind;
        }
    }
    k
}

/// Replaces `old` objects of each kind at `at` in `into` with the objects of `new`.
fn splice(into: &mut Snapshot, at: &Counts, old: &Counts, new: Snapshot) {
    fn one<T>(v: &mut Vec<T>, at: usize, old: usize, new: Vec<T>) {
        v.splice(at..at + old, new);
    }
    one(&mut into.nodes, at[0], old[0], new.nodes);
    one(&mut into.namespaces, at[1], old[1], new.namespaces);
    one(&mut into.pods, at[2], old[2], new.pods);
    one(&mut into.services, at[3], old[3], new.services);
    one(&mut into.endpoint_slices, at[4], old[4], new.endpoint_slices);
    one(&mut into.network_policies, at[5], old[5], new.network_policies);
}

impl ManifestsSource {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            files: BTreeMap::new(),
            totals: [0; 6],
            loaded: false,
            scanner: None,
            hash_wanted: false,
            scan_done: None,
        }
    }

    /// Signals `done` when a scan asked for by [`Self::poll`] is there to be taken.
    pub fn with_scan_signal(mut self, done: std::sync::Weak<tokio::sync::Notify>) -> Self {
        self.scan_done = Some(done);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn loaded(&self) -> bool {
        self.loaded
    }

    /// Brings `snapshot` up to date with the files, if any changed. `dirty`: the names of the
    /// directory that may have changed since the last call (from inotify; `None`: any may have). With
    /// `scan`, every file's metadata is looked at on a thread of its own, and a later call looks at
    /// the files that scan found changed; a `resync` is always an update, and its scan hashes every
    /// text too, so a file rewritten with the same size and mtime is read again (when events were
    /// lost, every text is read here and the update is of every kind). `snapshot` must
    /// be the one the previous call left; anything else (checked by its object counts) is rebuilt from
    /// every file.
    pub fn poll(
        &mut self,
        resync: bool,
        snapshot: &mut Snapshot,
        dirty: Option<BTreeSet<OsString>>,
        scan: bool,
    ) -> Result<Option<Update>> {
        let in_place = self.loaded && self.path.is_dir() && counts(snapshot) == self.expected_counts();
        // Events were lost (or there is no inotify): every file is looked at here.
        let (true, Some(mut names)) = (in_place, dirty) else {
            return self.poll_all(resync, snapshot);
        };
        names.extend(self.take_scan(false).unwrap_or_default());
        self.hash_wanted |= resync;
        if (scan || self.hash_wanted) && !self.ask_scan() {
            // Without a scanner thread (it failed) the scan is done here.
            return self.poll_all(resync || self.hash_wanted, snapshot);
        }
        let update = self.poll_names(snapshot, names)?;
        if !resync {
            return Ok(update);
        }
        // The texts are checked by the scan; this resync's update is what changed so far.
        Ok(Some(Update {
            changed: update.map_or(Kinds::NONE, |u| u.changed),
            rejected: self.rejected(),
        }))
    }

    /// Has every file looked at off this thread (texts too if a resync wants them); false if that
    /// cannot be done.
    fn ask_scan(&mut self) -> bool {
        let (path, done) = (&self.path, &self.scan_done);
        self.scanner
            .get_or_insert_with(|| DirScanner::start(path.clone(), done.clone()))
            .request(self.hash_wanted)
    }

    /// The names a finished scan found changed, added or gone (`wait`: for the scan to finish);
    /// files whose text differs from what was parsed are marked to be read whatever their metadata.
    fn take_scan(&mut self, wait: bool) -> Option<BTreeSet<OsString>> {
        let scan = match self.scanner.as_mut()?.take(wait)? {
            Ok(scan) => scan,
            Err(e) => {
                // The next scan or resync tries again; inotify still names what is written.
                tracing::warn!(error = %format!("{e:#}"), path = %self.path.display(), "scanning the manifests");
                return None;
            }
        };
        if scan.hashed {
            self.hash_wanted = false;
        }
        let name = |p: &Path| p.file_name().map(ToOwned::to_owned);
        let mut found = BTreeSet::new();
        // Both in path order: one walk, no lookups (a thousand path lookups cost milliseconds).
        let mut records = self.files.iter_mut().peekable();
        for s in scan.files {
            while let Some((gone, _)) = records.next_if(|(p, _)| **p < s.path) {
                found.extend(name(gone));
            }
            // A file read again since the scan may be named for nothing: looking at it again finds
            // it unchanged.
            match records.next_if(|(p, _)| **p == s.path) {
                None => found.extend(name(&s.path)),
                Some((_, f)) => {
                    if scan.hashed && s.hash != Some(f.hash) {
                        f.suspect = true;
                    }
                    if !f.unchanged(s.len, s.modified) {
                        found.extend(name(&s.path));
                    }
                }
            }
        }
        found.extend(records.filter_map(|(gone, _)| name(gone)));
        Some(found)
    }

    /// Waits for the scan asked for and returns the names it found to look at (tests).
    #[cfg(test)]
    fn finish_scan(&mut self) -> BTreeSet<OsString> {
        self.take_scan(true).unwrap_or_default()
    }

    fn expected_counts(&self) -> Counts {
        self.totals
    }

    fn take_record(&mut self, path: &Path) -> Option<ParsedFile> {
        let f = self.files.remove(path)?;
        for (t, c) in self.totals.iter_mut().zip(f.counts) {
            *t -= c;
        }
        Some(f)
    }

    fn put_record(&mut self, path: PathBuf, f: ParsedFile) {
        for (t, c) in self.totals.iter_mut().zip(f.counts) {
            *t += c;
        }
        self.files.insert(path, f);
    }

    /// [`Self::poll`] for the given names only.
    fn poll_names(&mut self, snapshot: &mut Snapshot, names: BTreeSet<OsString>) -> Result<Option<Update>> {
        let mut changed = Kinds::NONE;
        let mut reread = false;
        for name in names {
            let path = self.path.join(&name);
            let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file());
            // Where the file's runs start: the objects of the files before it.
            let at = self.files.range(..path.clone()).fold([0; 6], |mut acc, (_, f)| {
                for (a, c) in acc.iter_mut().zip(f.counts) {
                    *a += c;
                }
                acc
            });
            let cached = self.take_record(&path);
            let Some(meta) = meta else {
                if let Some(f) = cached {
                    splice(snapshot, &at, &f.counts, Snapshot::default());
                    changed |= kinds_present(&f.counts);
                    reread = true;
                }
                continue;
            };
            let (len, modified) = (meta.len(), meta.modified().ok());
            let parsed = match cached {
                Some(f) if f.unchanged(len, modified) => f,
                cached => {
                    let (parsed, kinds) = read_file(&path, len, modified, cached, snapshot, &at)?;
                    if let Some(kinds) = kinds {
                        changed |= kinds;
                        reread = true;
                    }
                    parsed
                }
            };
            self.put_record(path, parsed);
        }
        if !reread {
            return Ok(None);
        }
        Ok(Some(Update {
            rejected: self.rejected(),
            changed,
        }))
    }

    fn rejected(&self) -> Vec<Rejected> {
        self.files
            .values()
            .flat_map(|f| f.rejected.iter().cloned())
            .collect()
    }

    /// Every file's metadata, and with `resync` every file's text.
    fn poll_all(&mut self, resync: bool, snapshot: &mut Snapshot) -> Result<Option<Update>> {
        self.hash_wanted &= !resync;
        let current = list_files(&self.path)?;
        let rebuild = !self.loaded || counts(snapshot) != self.expected_counts();
        if rebuild {
            *snapshot = Snapshot::default();
            self.files.clear();
        }
        // Until the walk below completes, no record is trusted (an error leaves none).
        self.totals = [0; 6];
        // The files to read, read first, together.
        let to_read: Vec<(&Path, Option<u64>, &[u64])> = current
            .iter()
            .filter_map(|(path, len, modified)| match self.files.get(path) {
                Some(f) if !resync && f.unchanged(*len, *modified) => None,
                record => {
                    let (hash, documents) = ParsedFile::last_parse(record);
                    Some((path.as_path(), hash, documents))
                }
            })
            .collect();
        let mut preloaded: BTreeMap<PathBuf, Result<Loaded>> = to_read
            .iter()
            .map(|(p, _, _)| p.to_path_buf())
            .zip(load_files(&to_read))
            .collect();
        let mut changed = Kinds::NONE;
        let mut reread = false;
        let mut at: Counts = [0; 6];
        let mut old_files = std::mem::take(&mut self.files).into_iter().peekable();
        let mut files = BTreeMap::new();
        for (path, len, modified) in current {
            // Files gone from the directory (they sort before this one): their runs go.
            while let Some((gone, _)) = old_files.peek()
                && *gone < path
            {
                let (_, f) = old_files.next().expect("peeked");
                splice(snapshot, &at, &f.counts, Snapshot::default());
                changed |= kinds_present(&f.counts);
                reread = true;
            }
            let cached = match old_files.peek() {
                Some((p, _)) if *p == path => old_files.next().map(|(_, f)| f),
                _ => None,
            };
            // Read above when it is new, its metadata changed, or a resync reads every text.
            let parsed = match preloaded.remove(&path) {
                None => cached.expect("a file not read has an unchanged record"),
                Some(loaded) => {
                    let (parsed, kinds) = place(loaded?, len, modified, cached, snapshot, &at);
                    if let Some(kinds) = kinds {
                        changed |= kinds;
                        reread = true;
                    }
                    parsed
                }
            };
            for (a, c) in at.iter_mut().zip(parsed.counts) {
                *a += c;
            }
            files.insert(path, parsed);
        }
        for (_, f) in old_files {
            splice(snapshot, &at, &f.counts, Snapshot::default());
            changed |= kinds_present(&f.counts);
            reread = true;
        }
        self.files = files;
        self.totals = at;
        self.loaded = true;
        if rebuild || resync {
            changed = Kinds::ALL;
        }
        // A re-read file without objects of ours (say, only its rejected documents changed) is still
        // an update: the caller refreshes what it reports.
        if !reread && !rebuild && !resync {
            return Ok(None);
        }
        Ok(Some(Update {
            rejected: self.rejected(),
            changed,
        }))
    }
}

/// Reads one file whose metadata changed: when its text is the same (a resync, a `touch`), the
/// objects in the snapshot stand; otherwise its runs at `at` are replaced by what it holds now.
/// Returns the file's record and the kinds that may have changed (`None`: the text is the same).
fn read_file(
    path: &Path,
    len: u64,
    modified: Option<SystemTime>,
    cached: Option<ParsedFile>,
    snapshot: &mut Snapshot,
    at: &Counts,
) -> Result<(ParsedFile, Option<Kinds>)> {
    let (hash, documents) = ParsedFile::last_parse(cached.as_ref());
    let loaded = load_file(path, hash, documents)?;
    Ok(place(loaded, len, modified, cached, snapshot, at))
}

/// A file's text, hashed, and parsed unless it is the text last parsed (`parsed_hash`).
struct Loaded {
    hash: u64,
    parsed: Option<ParsedText>,
}

/// What a changed text gave: the objects of the documents parsed, and for every document in order
/// where its objects come from.
struct ParsedText {
    objects: Snapshot,
    rejected: Vec<Rejected>,
    pieces: Vec<Piece>,
    documents: Box<[u64]>,
}

/// One document of a changed text.
enum Piece {
    /// Unchanged since the last parse: its one object, of kind `kind` (a [`Counts`] index), is the
    /// `pos`-th of that kind in the file's old run.
    Reused { kind: u8, pos: u32 },
    /// Parsed now: so many objects of each kind, next in `ParsedText::objects`.
    Parsed(Counts),
}

/// Document hashes with the kind of their one object packed in the low three bits (the hash keeps
/// 61 bits: a file's documents are compared only with that file's).
struct DocumentHashes;

impl DocumentHashes {
    /// The document gave no object, more than one, or was rejected: it is parsed whenever its file is.
    const NOT_REUSABLE: u64 = 7;

    fn pack(hash: u64, kind: Option<usize>) -> u64 {
        (hash & !7) | kind.map_or(Self::NOT_REUSABLE, |k| k as u64)
    }

    /// The reusable documents of a file: hash → (kind, position in that kind's run), first of equal
    /// texts first (each is taken once, so a duplicate document is parsed rather than sharing one
    /// allocation between two entries).
    fn index(documents: &[u64]) -> std::collections::HashMap<u64, Vec<(u8, u32)>> {
        let mut seen = [0u32; 6];
        let mut index: std::collections::HashMap<u64, Vec<(u8, u32)>> =
            std::collections::HashMap::with_capacity(documents.len());
        for d in documents {
            let kind = d & 7;
            if kind == Self::NOT_REUSABLE {
                continue;
            }
            let k = kind as usize;
            index.entry(d & !7).or_default().push((k as u8, seen[k]));
            seen[k] += 1;
        }
        for v in index.values_mut() {
            v.reverse();
        }
        index
    }
}

fn load_file(path: &Path, parsed_hash: Option<u64>, documents: &[u64]) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let hash = text_hash(&text);
    if parsed_hash == Some(hash) {
        return Ok(Loaded { hash, parsed: None });
    }
    Ok(Loaded {
        hash,
        parsed: Some(parse_text(&text, path, documents)),
    })
}

/// Parses the documents of `text` whose hashes are not among `documents` (the last parse's).
fn parse_text(text: &str, path: &Path, documents: &[u64]) -> ParsedText {
    let mut reusable = DocumentHashes::index(documents);
    let (mut objects, mut rejected) = (Snapshot::default(), Vec::new());
    let split = split_documents(text);
    let mut pieces = Vec::with_capacity(split.len());
    let mut hashes = Vec::with_capacity(split.len());
    // A document that gives several objects (a List) shifts the positions of those after it.
    let mut placeable = true;
    for (index, document) in split.iter().enumerate() {
        let hash = text_hash(document) & !7;
        if let Some((kind, pos)) = reusable.get_mut(&hash).and_then(|v| v.pop()) {
            pieces.push(Piece::Reused { kind, pos });
            hashes.push(DocumentHashes::pack(hash, Some(kind as usize)));
            continue;
        }
        let (before, rejected_before) = (counts(&objects), rejected.len());
        parse_document(index, document, path, &mut objects, &mut rejected, Keep::Read);
        let mut gave = counts(&objects);
        for (g, b) in gave.iter_mut().zip(before) {
            *g -= b;
        }
        let total: usize = gave.iter().sum();
        let one = (total == 1 && rejected.len() == rejected_before)
            .then(|| gave.iter().position(|n| *n == 1))
            .flatten();
        placeable &= total == 0 || one.is_some();
        hashes.push(DocumentHashes::pack(hash, one));
        pieces.push(Piece::Parsed(gave));
    }
    ParsedText {
        objects,
        rejected,
        pieces,
        documents: if placeable { hashes.into() } else { Box::default() },
    }
}

/// Loads many files at once on a few threads (parsing YAML is most of a first read: ~1 s at 10k
/// Services and 100k endpoints on one core), in the order given.
fn load_files(files: &[(&Path, Option<u64>, &[u64])]) -> Vec<Result<Loaded>> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if workers < 2 || files.len() < 8 {
        return files.iter().map(|(p, h, d)| load_file(p, *h, d)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, Result<Loaded>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((path, hash, documents)) = files.get(i) else {
                            break mine;
                        };
                        mine.push((i, load_file(path, *hash, documents)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, l)| l).collect()
}

/// Puts a loaded file's objects at `at` in `snapshot` in place of its old ones (`cached`).
fn place(
    loaded: Loaded,
    len: u64,
    modified: Option<SystemTime>,
    cached: Option<ParsedFile>,
    snapshot: &mut Snapshot,
    at: &Counts,
) -> (ParsedFile, Option<Kinds>) {
    let Some(text) = loaded.parsed else {
        let f = cached.expect("a text the same as the one parsed has a record");
        return (
            ParsedFile {
                len,
                modified,
                hash: loaded.hash,
                suspect: false,
                ..f
            },
            None,
        );
    };
    let old_counts = cached.map_or([0; 6], |f| f.counts);
    let objects = assemble(snapshot, at, &old_counts, text.objects, &text.pieces);
    let new_counts = counts(&objects);
    splice(snapshot, at, &old_counts, objects);
    (
        ParsedFile {
            len,
            modified,
            counts: new_counts,
            hash: loaded.hash,
            documents: text.documents,
            rejected: text.rejected,
            suspect: false,
        },
        Some(kinds_present(&old_counts) | kinds_present(&new_counts)),
    )
}

/// The file's objects in document order: the reused ones taken from its old runs (at `at`, `old`
/// long), the others from `parsed`.
fn assemble(snapshot: &Snapshot, at: &Counts, old: &Counts, parsed: Snapshot, pieces: &[Piece]) -> Snapshot {
    fn one<T>(run: &[Arc<T>], parsed: Vec<Arc<T>>, pieces: &[Piece], kind: usize) -> Vec<Arc<T>> {
        if !pieces.iter().any(|p| matches!(p, Piece::Reused { .. })) {
            return parsed;
        }
        let mut parsed = parsed.into_iter();
        let mut out = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Reused { kind: k, pos } if usize::from(*k) == kind => {
                    out.push(Arc::clone(&run[*pos as usize]));
                }
                Piece::Reused { .. } => {}
                Piece::Parsed(gave) => out.extend(parsed.by_ref().take(gave[kind])),
            }
        }
        out
    }
    let run = |k: usize| at[k]..at[k] + old[k];
    Snapshot {
        nodes: one(&snapshot.nodes[run(0)], parsed.nodes, pieces, 0),
        namespaces: one(&snapshot.namespaces[run(1)], parsed.namespaces, pieces, 1),
        pods: one(&snapshot.pods[run(2)], parsed.pods, pieces, 2),
        services: one(&snapshot.services[run(3)], parsed.services, pieces, 3),
        endpoint_slices: one(
            &snapshot.endpoint_slices[run(4)],
            parsed.endpoint_slices,
            pieces,
            4,
        ),
        network_policies: one(
            &snapshot.network_policies[run(5)],
            parsed.network_policies,
            pieces,
            5,
        ),
    }
}

/// A name the directory source reads (`*.yaml`, `*.yml`, `*.json`).
pub fn is_manifest_name(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

pub fn load(path: &Path) -> Result<(Snapshot, Vec<Rejected>)> {
    let mut snapshot = Snapshot::default();
    let mut rejected = Vec::new();
    for (file, _, _) in list_files(path)? {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        parse_into(&text, &file, &mut snapshot, &mut rejected);
    }
    Ok((snapshot, rejected))
}

/// The documents of a multi-document YAML text, split on `---` lines. Done by hand because serde_yaml's
/// document iterator cannot continue past a syntax error, and one broken document must not hide the
/// others.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed.starts_with("---#") {
            docs.push(String::new());
            continue;
        }
        let current = docs.last_mut().expect("never empty");
        current.push_str(line);
        current.push('\n');
    }
    docs
}

/// Adds every object of a multi-document YAML text to `snapshot`, cut down as the agent keeps it.
pub fn parse_into(text: &str, file: &Path, snapshot: &mut Snapshot, rejected: &mut Vec<Rejected>) {
    parse_documents(text, file, snapshot, rejected, Keep::Read);
}

/// [`parse_into`] keeping every field of the stored types, the metadata whole (the tests of the cut-down
/// compare against it). Pods and EndpointSlices are in their compact types either way (`crate::slim`).
#[cfg(test)]
pub fn parse_into_whole(text: &str, file: &Path, snapshot: &mut Snapshot, rejected: &mut Vec<Rejected>) {
    parse_documents(text, file, snapshot, rejected, Keep::Whole);
}

/// What of an object the parser keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// The fields the agent reads ([`Strip`]).
    Read,
    #[cfg_attr(not(test), allow(dead_code))]
    Whole,
}

fn parse_documents(
    text: &str,
    file: &Path,
    snapshot: &mut Snapshot,
    rejected: &mut Vec<Rejected>,
    keep: Keep,
) {
    for (index, document) in split_documents(text).iter().enumerate() {
        parse_document(index, document, file, snapshot, rejected, keep);
    }
}

/// Adds the objects of one document (the `index`-th of `file`) to `snapshot`.
fn parse_document(
    index: usize,
    document: &str,
    file: &Path,
    snapshot: &mut Snapshot,
    rejected: &mut Vec<Rejected>,
    keep: Keep,
) {
    let value = match serde_yaml::from_str::<serde_yaml::Value>(document) {
        Ok(serde_yaml::Value::Null) => return,
        Ok(v) => v,
        Err(e) => {
            rejected.push(Rejected {
                origin: file.display().to_string(),
                object: format!("document {}", index + 1),
                reason: format!("not valid YAML: {e}"),
            });
            return;
        }
    };
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    let name = object_name(&value, &kind, index);
    let result = match kind.as_str() {
        "Node" => push(value, keep, &mut snapshot.nodes),
        "Namespace" => push(value, keep, &mut snapshot.namespaces),
        "Pod" => push(value, keep, &mut snapshot.pods),
        "Service" => push(value, keep, &mut snapshot.services),
        "EndpointSlice" => push(value, keep, &mut snapshot.endpoint_slices),
        "NetworkPolicy" => push(value, keep, &mut snapshot.network_policies),
        "List" => {
            // `kubectl get -o yaml` output: a List whose items are objects.
            if let Some(serde_yaml::Value::Sequence(items)) = value.get("items") {
                for item in items {
                    let doc = serde_yaml::to_string(item).unwrap_or_default();
                    parse_documents(&doc, file, snapshot, rejected, keep);
                }
            }
            Ok(())
        }
        "" => Err("field kind is missing".to_string()),
        other => Err(format!("kind {other} is not one the agent reads")),
    };
    if let Err(reason) = result {
        rejected.push(Rejected {
            origin: file.display().to_string(),
            object: name,
            reason,
        });
    }
}

/// Deserializes one object and cuts it down to the fields the agent reads, as the API-server source
/// does (a file's annotations, managedFields and pod specs would otherwise be held for every object);
/// the error names the field path (`spec.containers: invalid type ...`).
fn push<T: serde::de::DeserializeOwned + Strip>(
    value: serde_yaml::Value,
    keep: Keep,
    into: &mut Vec<Arc<T>>,
) -> Result<(), String> {
    serde_path_to_error::deserialize(value)
        .map(|mut o: T| {
            if keep == Keep::Read {
                o.strip();
            }
            into.push(Arc::new(o));
        })
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

fn object_name(value: &serde_yaml::Value, kind: &str, index: usize) -> String {
    let meta = value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(|n| n.as_str());
    let ns = meta.and_then(|m| m.get("namespace")).and_then(|n| n.as_str());
    match (name, ns) {
        (Some(n), Some(ns)) => format!("{kind} {ns}/{n}"),
        (Some(n), None) => format!("{kind} {n}"),
        _ => format!(
            "{} (document {})",
            if kind.is_empty() { "object" } else { kind },
            index + 1
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBJECTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.50.10}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: app, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: app}
---
apiVersion: v1
kind: Pod
metadata: {name: broken, namespace: app}
spec: {containers: "not a list"}
"#;

    #[test]
    fn reads_known_kinds_and_reports_the_rest_by_name() {
        let mut snapshot = Snapshot::default();
        let mut rejected = Vec::new();
        parse_into(OBJECTS, Path::new("objects.yaml"), &mut snapshot, &mut rejected);
        assert_eq!(snapshot.nodes.len(), 1);
        assert_eq!(snapshot.pods.len(), 1);
        assert_eq!(snapshot.pods[0].metadata.name.as_deref(), Some("web"));
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        assert_eq!(rejected[0].object, "ConfigMap app/cfg");
        assert!(rejected[0].reason.contains("ConfigMap"));
        assert_eq!(rejected[1].object, "Pod app/broken");
        assert!(
            rejected[1].reason.contains("containers"),
            "{}",
            rejected[1].reason
        );
    }

    #[test]
    fn a_broken_document_does_not_hide_the_others() {
        let text = "kind: Node\nmetadata: {name: a}\n---\n: : :\n---\nkind: Node\nmetadata: {name: b}\n";
        let mut snapshot = Snapshot::default();
        let mut rejected = Vec::new();
        parse_into(text, Path::new("f.yaml"), &mut snapshot, &mut rejected);
        assert_eq!(snapshot.nodes.len(), 2, "{rejected:?}");
        assert_eq!(rejected.len(), 1);
    }

    fn ns(name: &str) -> String {
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
    }

    fn names(s: &Snapshot) -> Vec<String> {
        let mut v: Vec<String> = s
            .namespaces
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn only_changed_files_are_read_again_and_removed_files_take_their_objects() {
        let dir = std::env::temp_dir().join(format!("strait-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), ns("a")).unwrap();
        std::fs::write(dir.join("b.yaml"), ns("b")).unwrap();
        let mut src = ManifestsSource::new(&dir);
        let mut snapshot = Snapshot::default();
        let first = src
            .poll(false, &mut snapshot, None, false)
            .unwrap()
            .expect("first read");
        assert_eq!(first.changed, Kinds::ALL);
        assert_eq!(names(&snapshot), ["a", "b"]);
        assert!(
            src.poll(false, &mut snapshot, None, false).unwrap().is_none(),
            "nothing changed"
        );
        // a.yaml rewritten behind the source's back with the same size and mtime: only a re-read would
        // see "z", so still seeing "a" shows that changing b.yaml re-reads b.yaml alone.
        let a = dir.join("a.yaml");
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        std::fs::write(&a, ns("z")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&a)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::write(dir.join("b.yaml"), ns("b2") + "---\n" + &ns("b3")).unwrap();
        let second = src
            .poll(false, &mut snapshot, None, false)
            .unwrap()
            .expect("b.yaml changed");
        assert_eq!(second.changed, Kinds::NAMESPACES, "only the kinds of b.yaml");
        assert_eq!(names(&snapshot), ["a", "b2", "b3"]);
        // A resync with inotify working: the texts are hashed off the caller's thread, and a.yaml,
        // whose metadata says nothing changed, is read again on the next call.
        let resync = src
            .poll(true, &mut snapshot, Some(BTreeSet::new()), false)
            .unwrap()
            .expect("a resync is an update");
        assert_eq!(resync.changed, Kinds::NONE, "nothing seen changed yet");
        assert_eq!(names(&snapshot), ["a", "b2", "b3"], "not read yet");
        let found = src.finish_scan();
        assert_eq!(found, BTreeSet::from(["a.yaml".into()]));
        src.poll(false, &mut snapshot, Some(found), false)
            .unwrap()
            .expect("a.yaml is read again");
        assert_eq!(
            names(&snapshot),
            ["b2", "b3", "z"],
            "a resync finds every changed text"
        );
        src.poll(true, &mut snapshot, Some(BTreeSet::new()), false)
            .unwrap();
        assert!(src.finish_scan().is_empty(), "every text is what was parsed");
        // A scan of metadata only, with a file added, one removed and one changed in size.
        std::fs::write(dir.join("c.yaml"), ns("c")).unwrap();
        std::fs::write(dir.join("b.yaml"), ns("b4")).unwrap();
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        src.poll(false, &mut snapshot, Some(BTreeSet::new()), true)
            .unwrap();
        let found = src.finish_scan();
        assert_eq!(
            found,
            BTreeSet::from(["a.yaml".into(), "b.yaml".into(), "c.yaml".into()])
        );
        src.poll(false, &mut snapshot, Some(found), false)
            .unwrap()
            .expect("three files changed");
        assert_eq!(names(&snapshot), ["b4", "c"]);
        std::fs::write(dir.join("a.yaml"), ns("z")).unwrap();
        std::fs::write(dir.join("b.yaml"), ns("b2") + "---\n" + &ns("b3")).unwrap();
        std::fs::remove_file(dir.join("c.yaml")).unwrap();
        src.poll(false, &mut snapshot, None, false).unwrap();
        assert_eq!(names(&snapshot), ["b2", "b3", "z"]);
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        src.poll(false, &mut snapshot, None, false)
            .unwrap()
            .expect("a.yaml went away");
        assert_eq!(names(&snapshot), ["b2", "b3"]);
        // A file added between two others lands in file order, next to its neighbours' runs.
        std::fs::write(dir.join("a0.yaml"), ns("a0") + "---\n" + SLICE).unwrap();
        let added = src
            .poll(false, &mut snapshot, None, false)
            .unwrap()
            .expect("a0.yaml appeared");
        assert_eq!(added.changed, Kinds::NAMESPACES | Kinds::ENDPOINT_SLICES);
        assert_eq!(names(&snapshot), ["a0", "b2", "b3"]);
        assert_eq!(snapshot.namespaces[0].metadata.name.as_deref(), Some("a0"));
        assert_eq!(snapshot.endpoint_slices.len(), 1);
        // A snapshot that is not the one the source left is rebuilt from every file.
        let mut other = Snapshot::default();
        src.poll(false, &mut other, None, false)
            .unwrap()
            .expect("rebuilt");
        assert_eq!(names(&other), ["a0", "b2", "b3"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Polling only the names inotify reported gives the snapshot a full read gives, objects in the
    /// same order, and leaves unnamed files alone until a full read.
    #[test]
    fn polling_the_written_names_only_matches_a_full_read() {
        let dir = std::env::temp_dir().join(format!("strait-manifests-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["b", "d", "f"] {
            std::fs::write(dir.join(format!("{f}.yaml")), ns(f)).unwrap();
        }
        let mut src = ManifestsSource::new(&dir);
        let mut snapshot = Snapshot::default();
        src.poll(false, &mut snapshot, None, false)
            .unwrap()
            .expect("first read");
        let named = |n: &[&str]| -> Option<BTreeSet<OsString>> {
            Some(n.iter().map(|n| format!("{n}.yaml").into()).collect())
        };
        let full = || in_order(&fresh_read(&dir));
        // Changed, added before, between and after, removed: in one batch and one by one.
        std::fs::write(
            dir.join("d.yaml"),
            ns("d1")
                + "---
" + &ns("d2"),
        )
        .unwrap();
        std::fs::write(dir.join("a.yaml"), ns("a")).unwrap();
        std::fs::write(dir.join("c.yaml"), ns("c")).unwrap();
        std::fs::remove_file(dir.join("f.yaml")).unwrap();
        let update = src
            .poll(false, &mut snapshot, named(&["d", "a", "c", "f"]), false)
            .unwrap()
            .expect("changes");
        assert_eq!(update.changed, Kinds::NAMESPACES);
        assert_eq!(in_order(&snapshot), full());
        assert_eq!(in_order(&snapshot), ["a", "b", "c", "d1", "d2"]);
        std::fs::write(dir.join("g.yaml"), ns("g")).unwrap();
        src.poll(false, &mut snapshot, named(&["g"]), false)
            .unwrap()
            .expect("g.yaml appeared");
        assert_eq!(in_order(&snapshot), full());
        // A name without a change, and a name of a file that never existed: no update.
        assert!(
            src.poll(false, &mut snapshot, named(&["b", "x"]), false)
                .unwrap()
                .is_none()
        );
        // A change nobody named is not seen, until a read of every file.
        std::fs::write(
            dir.join("b.yaml"),
            ns("b")
                + "---
" + &ns("b2"),
        )
        .unwrap();
        assert!(
            src.poll(false, &mut snapshot, named(&[]), false)
                .unwrap()
                .is_none()
        );
        src.poll(false, &mut snapshot, None, false)
            .unwrap()
            .expect("seen by a full read");
        assert_eq!(in_order(&snapshot), full());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Rewriting a file parses only the documents whose text changed: the others keep their
    /// objects (the same allocations, which is how the planner and the policy pass see "unchanged"),
    /// in the new document order, and the result is what a fresh read gives.
    #[test]
    fn a_rewritten_file_parses_only_its_changed_documents() {
        let dir = std::env::temp_dir().join(format!("strait-manifests-docs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("objects.yaml");
        let node = "kind: Node\nmetadata: {name: n}\n";
        let write = |docs: &[String]| std::fs::write(&file, docs.join("---\n")).unwrap();
        write(&[ns("a"), ns("b"), node.to_string(), ns("c")]);
        let mut src = ManifestsSource::new(&dir);
        let mut snapshot = Snapshot::default();
        src.poll(false, &mut snapshot, None, false)
            .unwrap()
            .expect("first read");
        let before = snapshot.clone();
        let fresh = || fresh_read(&dir);
        // b edited, a and c swapped, a broken document and a duplicate of c added.
        write(&[
            ns("c"),
            ns("b2"),
            ": : :\n".to_string(),
            node.to_string(),
            ns("a"),
            ns("c"),
        ]);
        let update = src
            .poll(false, &mut snapshot, named_all(&dir), false)
            .unwrap()
            .expect("rewritten");
        assert_eq!(update.rejected.len(), 1, "{:?}", update.rejected);
        assert_eq!(in_order(&snapshot), ["c", "b2", "a", "c"]);
        assert_eq!(in_order(&snapshot), in_order(&fresh()));
        assert!(
            Arc::ptr_eq(&snapshot.namespaces[0], &before.namespaces[2]),
            "c kept"
        );
        assert!(
            Arc::ptr_eq(&snapshot.namespaces[2], &before.namespaces[0]),
            "a kept"
        );
        assert!(
            !Arc::ptr_eq(&snapshot.namespaces[3], &before.namespaces[2]),
            "the duplicate is its own"
        );
        assert!(Arc::ptr_eq(&snapshot.nodes[0], &before.nodes[0]), "the node kept");
        // The broken document is parsed (and reported) at every rewrite; fixing it brings its object.
        let kept = snapshot.clone();
        write(&[ns("c"), ns("b2"), ns("d"), node.to_string(), ns("a"), ns("c")]);
        let update = src
            .poll(false, &mut snapshot, named_all(&dir), false)
            .unwrap()
            .expect("rewritten");
        assert!(update.rejected.is_empty(), "{:?}", update.rejected);
        assert_eq!(in_order(&snapshot), ["c", "b2", "d", "a", "c"]);
        assert!(
            Arc::ptr_eq(&snapshot.namespaces[1], &kept.namespaces[1]),
            "b2 kept"
        );
        assert!(
            Arc::ptr_eq(&snapshot.namespaces[4], &kept.namespaces[3]),
            "the duplicate kept"
        );
        // A List document gives several objects: the file is parsed whole next time, and still right.
        let list = "kind: List\nitems:\n- {kind: Namespace, metadata: {name: l1}}\n- {kind: Namespace, metadata: {name: l2}}\n";
        write(&[ns("a"), list.to_string()]);
        src.poll(false, &mut snapshot, named_all(&dir), false)
            .unwrap()
            .expect("rewritten");
        assert_eq!(in_order(&snapshot), ["a", "l1", "l2"]);
        let a = Arc::clone(&snapshot.namespaces[0]);
        write(&[list.to_string(), ns("a"), ns("e")]);
        src.poll(false, &mut snapshot, named_all(&dir), false)
            .unwrap()
            .expect("rewritten");
        assert_eq!(in_order(&snapshot), ["l1", "l2", "a", "e"]);
        assert_eq!(in_order(&snapshot), in_order(&fresh()));
        assert!(
            !Arc::ptr_eq(&snapshot.namespaces[2], &a),
            "parsed whole after a List"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The namespaces' names in snapshot order.
    fn in_order(s: &Snapshot) -> Vec<String> {
        s.namespaces
            .iter()
            .map(|n| n.metadata.name.clone().unwrap())
            .collect()
    }

    /// What a new source reads from `dir`.
    fn fresh_read(dir: &Path) -> Snapshot {
        let mut fresh = Snapshot::default();
        ManifestsSource::new(dir)
            .poll(false, &mut fresh, None, false)
            .unwrap();
        fresh
    }

    fn named_all(dir: &Path) -> Option<BTreeSet<OsString>> {
        Some(
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect(),
        )
    }

    const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: a0}\naddressType: IPv4\nendpoints: []\n";
}
