//! What the agent reads about the node it runs on: interfaces, addresses, routes.
//! Everything here reads the network namespace of the calling thread.

pub mod links;
pub mod routes;
