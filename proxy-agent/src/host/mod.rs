//! What the agent reads about the node it runs on: interfaces, addresses, routes, ephemeral ports.
//! Everything here reads the network namespace of the calling thread.

pub mod links;
pub mod ports;
pub mod routes;
