//! The protocol suites on a cluster of two nodes: clients, and HTTP
//! requests, take the nodes in turn.

use crate::common::engine::Setup;

const SETUP: Setup = Setup::Cluster { nodes: 2 };

#[path = "errors.rs"]
mod errors;
#[path = "identity.rs"]
mod identity;
#[path = "properties.rs"]
mod properties;
#[path = "resume.rs"]
mod resume;
#[path = "rooms.rs"]
mod rooms;
