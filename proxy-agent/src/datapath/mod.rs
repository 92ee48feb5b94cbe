//! The kernel side as the agent sees it: the loaded object, its pinned maps and where programs are
//! attached. This module and its children are the only code that calls aya.

pub mod attach;
pub mod batch;
mod bpf_sys;
pub mod bpffs;
pub mod cgroup;
pub mod conntrack;
pub mod events;
pub mod external_maps;
pub mod lb_maps;
pub mod links;
pub mod loader;
pub mod map_source;
pub use map_source::{MapSource, absent_ok};
pub mod policy_maps;
pub mod stats;

pub use attach::{Attachments, DesiredAttachments};
pub use loader::Datapath;
