//! The flow-events ring buffer: taken out of the loaded object once, then read on the async runtime
//! (an `AsyncFd` wakes the reader when the kernel has written records, as aya-log does).

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use common::map_names;
use tokio::io::unix::AsyncFd;

use super::Datapath;

pub struct EventsReader {
    ring: RingBuf<MapData>,
}

impl Datapath {
    /// The events ring buffer (owned from here on). `None` when the object has no such map.
    pub fn take_events(&mut self) -> Option<Result<EventsReader>> {
        let map = self.ebpf.take_map(map_names::EVENTS)?;
        Some(
            RingBuf::try_from(map)
                .with_context(|| format!("map {} is not a ring buffer", map_names::EVENTS))
                .map(|ring| EventsReader { ring }),
        )
    }
}

impl EventsReader {
    /// Reads records forever, handing each one's bytes to `sink` (in batches: `sink` gets every record
    /// available at a wake-up, then the reader waits again).
    pub async fn run(self, mut sink: impl FnMut(&[&[u8]])) -> Result<()> {
        // The AsyncFd owns the ring buffer, hence its fd, for as long as it is registered: the I/O-safety
        // concern behind the deprecation (a registered fd closed underneath) cannot arise here.
        #[allow(deprecated)]
        let mut fd = AsyncFd::new(self.ring).context("registering the events ring buffer")?;
        loop {
            let mut guard = fd.readable_mut().await.context("waiting for flow events")?;
            let ring = guard.get_inner_mut();
            let mut batch: Vec<Vec<u8>> = Vec::new();
            while let Some(item) = ring.next() {
                batch.push(item.to_vec());
                if batch.len() >= 256 {
                    let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                    sink(&refs);
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                sink(&refs);
            }
            guard.clear_ready();
        }
    }
}
