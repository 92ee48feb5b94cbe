//! This file exists to give the crate a library target; the programs live in `main.rs` and its modules.
#![no_std]
