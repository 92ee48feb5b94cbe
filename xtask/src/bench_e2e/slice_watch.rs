//! When an EndpointSlice change becomes visible on the API: the bench watches the churn slice the
//! way the proxies do (a watch on the apiserver), and stamps every event with the machine's wall
//! clock as it arrives. The endpoint-change figures start from the stamp of the event carrying the
//! resourceVersion the write returned, not from the writing kubectl's exit (which came after the
//! apiserver had already sent the event to its watchers, by a process exit and more).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::lab_cli::Kubectl;
use crate::lab::load::unix_us;

/// One watch event, stamped on arrival.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub resource_version: String,
    pub unix_us: u64,
}

/// A running watch on one EndpointSlice; the kubectl streaming it ends with this value.
pub struct SliceWatch {
    child: Child,
    events: Receiver<Event>,
}

/// The apiserver closes the watch after this at the latest (the bench ends it sooner).
const WATCH_SECONDS: u64 = 1800;

impl SliceWatch {
    /// Starts `kubectl get --raw` on the watch URL of `namespace/name` (kubectl copies the
    /// response stream to stdout as it comes, one JSON event per line) and waits until the
    /// apiserver has sent the slice's current state, so later writes are seen.
    pub fn start(kubectl: &Kubectl, namespace: &str, name: &str) -> Result<SliceWatch> {
        let url = format!(
            "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices?watch=true\
             &fieldSelector=metadata.name%3D{name}&timeoutSeconds={WATCH_SECONDS}"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &kubectl.netns])
            .arg(&kubectl.bin)
            .arg("--kubeconfig")
            .arg(&kubectl.kubeconfig)
            .args(["get", "--raw", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting the watch on EndpointSlice {namespace}/{name}"))?;
        let stdout = child.stdout.take().context("the watch's stdout")?;
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let unix_us = unix_us();
                if let Some(resource_version) = resource_version(&line)
                    && tx
                        .send(Event {
                            resource_version,
                            unix_us,
                        })
                        .is_err()
                {
                    break;
                }
            }
        });
        let watch = SliceWatch { child, events };
        match watch.events.recv_timeout(Duration::from_secs(30)) {
            Ok(_) => Ok(watch),
            Err(_) => bail!(
                "the watch on EndpointSlice {namespace}/{name} sent nothing within 30 s (the \
                 slice missing, or kubectl not streaming)"
            ),
        }
    }

    /// The stamp of the event carrying `resource_version`, waiting at most `limit`; events of
    /// other versions are passed over (an earlier write's, a controller's).
    pub fn seen(&mut self, resource_version: &str, limit: Duration) -> Result<Option<u64>> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if e.resource_version == resource_version => return Ok(Some(e.unix_us)),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("the EndpointSlice watch ended before resourceVersion {resource_version}")
                }
            }
        }
    }
}

impl Drop for SliceWatch {
    fn drop(&mut self) {
        // `ip netns exec` execs kubectl, so this is kubectl itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The object's resourceVersion in one line of a watch stream (`{"type":…,"object":{…}}`); None
/// for anything else (a bookmark has one too, and counts: it never carries a write's version).
fn resource_version(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    v["object"]["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_watch_line_gives_the_objects_resource_version() {
        let line = r#"{"type":"MODIFIED","object":{"kind":"EndpointSlice","metadata":{"name":"echo-bench","resourceVersion":"4711"},"endpoints":[]}}"#;
        assert_eq!(super::resource_version(line).as_deref(), Some("4711"));
        assert_eq!(super::resource_version("not json"), None);
        assert_eq!(
            super::resource_version(r#"{"type":"ERROR","object":{"code":410}}"#),
            None
        );
    }
}
