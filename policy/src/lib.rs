//! NetworkPolicy compiler (pure: no I/O, no client, no maps). Filled in by the NetworkPolicy issue;
//! the crate exists now so the workspace has its final shape and the dependency boundary is enforced.
#![forbid(unsafe_code)]
