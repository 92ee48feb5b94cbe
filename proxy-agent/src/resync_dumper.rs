//! The resync's dumps, read on a thread of its own from the maps' pins. A dump costs a syscall or two
//! per entry (0.2 s at 10k Services and 1k policies); read on the daemon's loop it held back every
//! change that arrived meanwhile. The daemon asks for one with its reconcilers' write generations,
//! goes on, and diffs against it when it is there — only if neither reconciler wrote in between (a
//! dump read across a write shows no single moment: an entry added and removed since would be missed
//! and stay behind). Otherwise it asks again; after a few misses it reads on the loop as before.

use std::{
    path::PathBuf,
    sync::mpsc::{self, Receiver, Sender, TryRecvError},
};

use anyhow::{Context, Result};

use crate::{
    datapath::{lb_maps, map_source::PinnedMaps, policy_maps},
    policy::PolicyMapsState,
    reconcile::DesiredMaps,
};

pub struct Dumps {
    pub lb: DesiredMaps,
    pub policy: PolicyMapsState,
    /// The write generations of the request (`Reconciler::writes`, `PolicyReconciler::writes`).
    pub lb_writes: u64,
    pub policy_writes: u64,
}

pub struct ResyncDumper {
    requests: Sender<(u64, u64)>,
    results: Receiver<Result<Dumps>>,
    /// A request is out and its answer not taken yet.
    asked: bool,
}

impl ResyncDumper {
    /// A thread that dumps the maps pinned under `root` when asked.
    pub fn start(root: PathBuf) -> Self {
        let (requests, asks) = mpsc::channel::<(u64, u64)>();
        let (answers, results) = mpsc::channel();
        std::thread::Builder::new()
            .name("resync-dumper".into())
            .spawn(move || {
                crate::background::lower_this_thread();
                while let Ok((lb_writes, policy_writes)) = asks.recv() {
                    let dumps = dump(&root).map(|(lb, policy)| Dumps {
                        lb,
                        policy,
                        lb_writes,
                        policy_writes,
                    });
                    if answers.send(dumps).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the resync dumper thread");
        Self {
            requests,
            results,
            asked: false,
        }
    }

    /// Asks for a dump of the maps as they are at these write generations, unless one is on its
    /// way; false if the thread is gone.
    pub fn request(&mut self, lb_writes: u64, policy_writes: u64) -> bool {
        if self.asked {
            return true;
        }
        self.asked = self.requests.send((lb_writes, policy_writes)).is_ok();
        self.asked
    }

    /// The dump asked for, once it is there.
    pub fn take(&mut self) -> Option<Result<Dumps>> {
        if !self.asked {
            return None;
        }
        match self.results.try_recv() {
            Ok(dumps) => {
                self.asked = false;
                Some(dumps)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.asked = false;
                Some(Err(anyhow::anyhow!("the resync dumper thread is gone")))
            }
        }
    }
}

fn dump(root: &std::path::Path) -> Result<(DesiredMaps, PolicyMapsState)> {
    let lb = PinnedMaps::open(root, &lb_maps::DUMPED)?;
    let policy = PinnedMaps::open(root, &policy_maps::DUMPED)?;
    Ok((
        lb_maps::dump(&lb).context("dumping the load-balancing maps from their pins")?,
        policy_maps::dump(&policy).context("dumping the policy maps from their pins")?,
    ))
}
