//! NetworkPolicy compiler (pure: no I/O, no client, no maps).
//!
//! - [`explain`]: the reference evaluator of `networking.k8s.io/v1` NetworkPolicy for one flow, with the
//!   policy/rule that allowed it or the policies whose isolation denied it.
#![forbid(unsafe_code)]

pub mod explain;
pub mod model;
pub mod net;
pub mod scenario;
pub mod selector;

pub use explain::{DirectionVerdict, ExplainError, Explanation, Flow, Peer, RuleMatch, explain};
pub use model::{
    Direction, InputError, ObjRef, PodRef, PolicyError, PolicyInput, PolicyRef, Protocol, policy_errors,
};
