//! The daemon's wake-up: a change of the source starts a pass at once, without waiting for the tick,
//! and the pass finds the change.

use std::time::Duration;

use super::*;

fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
}

/// A manifests source over a new directory `strait-daemon-<tag>-<pid>` holding `a.yaml` (namespace
/// a).
async fn source_over_a(tag: &str) -> (std::path::PathBuf, Source) {
    let dir = std::env::temp_dir().join(format!("strait-daemon-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), namespace("a")).unwrap();
    let source = Source::start(Some(&dir), None).await.unwrap();
    (dir, source)
}

#[tokio::test]
async fn a_manifest_change_wakes_a_pass_before_the_tick() {
    let (dir, mut source) = source_over_a("wake").await;
    // A tick an hour away: only the change can wake the pass within the test.
    let mut ticker = tokio::time::interval(Duration::from_secs(3600));
    assert_eq!(
        wait_for_work(&mut ticker, &mut source).await,
        Wake::Tick,
        "an interval's first tick is immediate"
    );
    let mut snapshot = Snapshot::default();
    source
        .poll(false, &mut snapshot, true)
        .unwrap()
        .expect("first read");
    let quiet = tokio::time::timeout(
        Duration::from_millis(100),
        wait_for_work(&mut ticker, &mut source),
    )
    .await;
    assert!(quiet.is_err(), "nothing changed, nothing wakes");
    std::fs::write(dir.join(".b.tmp"), namespace("b")).unwrap();
    std::fs::rename(dir.join(".b.tmp"), dir.join("b.yaml")).unwrap();
    let wake = tokio::time::timeout(Duration::from_secs(5), wait_for_work(&mut ticker, &mut source))
        .await
        .expect("the new file wakes a pass");
    assert_eq!(wake, Wake::Changed);
    // As the daemon's pass after a write: only the written names are looked at.
    let update = source
        .poll(false, &mut snapshot, false)
        .unwrap()
        .expect("the pass finds the change");
    assert_eq!(update.changed, Kinds::NAMESPACES);
    assert_eq!(snapshot.namespaces.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A rewrite that inotify cannot report (here: size and mtime kept, and the event drained) is found
/// by the resync's scan off the loop; the scan's end wakes a pass, which reads the file again.
#[tokio::test]
async fn a_resync_scan_finds_a_silent_rewrite_and_wakes_a_pass() {
    let (dir, mut source) = source_over_a("scan").await;
    let a = dir.join("a.yaml");
    let mut ticker = tokio::time::interval(Duration::from_secs(3600));
    assert_eq!(wait_for_work(&mut ticker, &mut source).await, Wake::Tick);
    let mut snapshot = Snapshot::default();
    source
        .poll(false, &mut snapshot, true)
        .unwrap()
        .expect("first read");
    let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
    std::fs::write(&a, namespace("z")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&a)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    // The write's own events wake passes; polled as the daemon does, they name a.yaml, whose
    // metadata says nothing changed. Drained until nothing wakes.
    let mut quiet = false;
    for _ in 0..5 {
        let wait = wait_for_work(&mut ticker, &mut source);
        if tokio::time::timeout(Duration::from_millis(300), wait)
            .await
            .is_err()
        {
            quiet = true;
            break;
        }
        assert!(source.poll(false, &mut snapshot, false).unwrap().is_none());
    }
    assert!(quiet, "the write's events keep waking passes");
    assert_eq!(snapshot.namespaces[0].metadata.name.as_deref(), Some("a"));
    // The resync: an update at once, the text checked off this thread.
    source
        .poll(true, &mut snapshot, false)
        .unwrap()
        .expect("a resync is an update");
    let wake = tokio::time::timeout(Duration::from_secs(5), wait_for_work(&mut ticker, &mut source))
        .await
        .expect("the scan's end wakes a pass");
    assert_eq!(wake, Wake::Changed);
    let update = source
        .poll(false, &mut snapshot, false)
        .unwrap()
        .expect("the pass reads a.yaml again");
    assert_eq!(update.changed, Kinds::NAMESPACES);
    assert_eq!(snapshot.namespaces[0].metadata.name.as_deref(), Some("z"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The read while the datapath loads: the first pass still is a full read (a resync, so the maps are
/// dumped) and still reports every kind that read brought, though the source has nothing new by then.
/// Later resyncs fall on ticks only, never on a pass woken by a change.
#[tokio::test]
async fn the_first_pass_programs_what_was_read_ahead_and_resyncs_wait_for_a_tick() {
    let (dir, source) = source_over_a("ahead").await;
    let pins = dir.join("pins");
    let mut watch = SourceWatch::new(source, &pins);
    let (mut sync, mut counters) = (SyncView::default(), AgentCounters::default());
    watch.read_ahead(&mut sync, &mut counters);
    assert_eq!(watch.snapshot.namespaces.len(), 1, "read ahead");

    let first = watch.refresh(&mut sync, &mut counters, Wake::Tick).unwrap();
    assert!(first.resync, "the first pass is the first full read");
    assert!(first.changed.intersects(Kinds::NAMESPACES), "{}", first.changed);
    assert!(watch.loaded());
    let second = watch.refresh(&mut sync, &mut counters, Wake::Tick).unwrap();
    assert_eq!(second.changed, Kinds::NONE, "carried once");

    // A resync is due: a pass woken by a change leaves it to the next tick.
    watch.last_resync = Some(Instant::now() - RESYNC);
    let changed = watch.refresh(&mut sync, &mut counters, Wake::Changed).unwrap();
    assert!(!changed.resync);
    let tick = watch.refresh(&mut sync, &mut counters, Wake::Tick).unwrap();
    assert!(tick.resync);
    let _ = std::fs::remove_dir_all(&dir);
}
