//! Shared helpers for the privileged tests: privilege checks, crafted packets, the datapath under test.

pub mod bench;
pub mod datapath;
pub mod forwarding;
pub mod lab;
pub mod netns;
pub mod packet;
pub mod privilege;
