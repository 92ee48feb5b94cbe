//! NetworkPolicy compiler (pure: no I/O, no client, no maps).
//!
//! - [`explain`]: the reference evaluator of `networking.k8s.io/v1` NetworkPolicy for one flow, with the
//!   policy/rule that allowed it or the policies whose isolation denied it.
//! - [`compile`]: the datapath state of one node (`common::policy` maps plus the tables that name their
//!   numbers), with stable numbering across recompiles.
//! - [`simulate`]: the datapath's lookup over compiled maps, the spec the kernel implements; tests check
//!   that it agrees with `explain` on every flow of every conformance case.
#![forbid(unsafe_code)]

pub mod compile;
pub mod explain;
pub mod identity;
pub mod model;
pub mod net;
pub mod scenario;
pub mod selector;
pub mod simulate;
pub mod slim;

pub use compile::{CompileError, EndpointInfo, PolicyDesired, compile};
pub use identity::{Allocations, IdentityKey};
pub use simulate::{SimStep, SimVerdict, simulate};

pub use explain::{DirectionVerdict, ExplainError, Explainer, Explanation, Flow, Peer, RuleMatch, explain};
pub use model::{
    Direction, InputError, ObjRef, PodRef, PolicyError, PolicyInput, PolicyRef, Protocol, policy_errors,
};
