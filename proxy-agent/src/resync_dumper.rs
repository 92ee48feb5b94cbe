//! The resync's dumps, read and diffed on a thread of its own from the maps' pins. A dump walked the
//! maps with a syscall or two per entry (0.2 s at 10k Services and 1k policies) and its diff takes
//! 5–8 ms; on the daemon's loop they held back every change that arrived meanwhile. The load-balancing
//! maps are now read in batches (200k entries: ~80 ms against ~440 ms walked, on the bench machine);
//! the policy maps are LPM tries, which the kernel reads only entry by entry. The daemon asks with its
//! reconcilers' write generations and what to diff against (both reconcilers' written states, shared:
//! a pass that writes before this thread is done copies its state first, see `reconcile::resync`),
//! goes on, and applies the diff when it is there. Without a state to diff against, the dump itself
//! comes back, used as before (see `Reconciler::resync_from`).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        mpsc::{self, Receiver, Sender, TryRecvError},
    },
};

use anyhow::{Context, Result};

use crate::{
    datapath::{lb_maps, map_source::PinnedMaps, policy_maps},
    policy::{PolicyMapsState, PolicyOp},
    reconcile::{DesiredMaps, ResyncTicket, resync::ResyncDiff},
};

/// The load-balancing maps' side of a resync.
pub enum LbDump {
    /// The dump diffed against the state written at the request (see `reconcile::resync`).
    Diff(ResyncDiff, ResyncTicket),
    /// The dump itself (the state written was not known here).
    Full(DesiredMaps),
}

/// The policy maps' side of a resync.
pub enum PolicyDump {
    /// The operations that bring the dump to the state written at the request.
    Diff(Vec<PolicyOp>),
    Full(PolicyMapsState),
}

pub struct Dumps {
    pub lb: LbDump,
    pub policy: PolicyDump,
    /// The write generations of the request (`Reconciler::writes`, `PolicyReconciler::writes`).
    pub lb_writes: u64,
    pub policy_writes: u64,
}

/// What the daemon asks for.
pub struct Request {
    pub lb_writes: u64,
    pub policy_writes: u64,
    /// The service reconciler's request (`Reconciler::resync_request`): diff against its state.
    pub lb_written: Option<(ResyncTicket, Arc<DesiredMaps>)>,
    /// The policy state written: diff against it.
    pub policy_written: Option<Arc<PolicyMapsState>>,
}

pub struct ResyncDumper {
    messages: Sender<Request>,
    results: Receiver<Result<Dumps>>,
    /// A request is out and its answer not taken yet.
    asked: bool,
}

impl ResyncDumper {
    /// A thread that dumps the maps pinned under `root` when asked.
    pub fn start(root: PathBuf) -> Self {
        let (messages, inbox) = mpsc::channel::<Request>();
        let (answers, results) = mpsc::channel();
        std::thread::Builder::new()
            .name("resync-dumper".into())
            .spawn(move || {
                crate::background::lower_this_thread();
                while let Ok(request) = inbox.recv() {
                    let dumps = dump(&root).map(|(lb, policy)| Dumps {
                        lb: match &request.lb_written {
                            Some((ticket, written)) => {
                                let diff = ResyncDiff::of(written, &lb);
                                crate::reconcile::drop_elsewhere(lb, DesiredMaps::len);
                                LbDump::Diff(diff, *ticket)
                            }
                            None => LbDump::Full(lb),
                        },
                        policy: match &request.policy_written {
                            Some(written) => PolicyDump::Diff(crate::policy::diff::diff(written, &policy)),
                            None => PolicyDump::Full(policy),
                        },
                        lb_writes: request.lb_writes,
                        policy_writes: request.policy_writes,
                    });
                    drop(request);
                    if answers.send(dumps).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the resync dumper thread");
        Self {
            messages,
            results,
            asked: false,
        }
    }

    /// A request is out and its answer not taken yet.
    pub fn asked(&self) -> bool {
        self.asked
    }

    /// Asks for a dump, unless one is on its way; false if the thread is gone.
    pub fn request(&mut self, request: Request) -> bool {
        if self.asked {
            return true;
        }
        self.asked = self.messages.send(request).is_ok();
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
