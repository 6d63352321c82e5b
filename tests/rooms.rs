//! Joining, leaving, chatting and typing, on the in-memory engine. The tests
//! are in `protocol/rooms.rs`; the cluster runs them too
//! (`tests/cluster_suites.rs`, `make cluster-test`).

mod common;

use common::engine::Setup;

const SETUP: Setup = Setup::Memory;

#[path = "protocol/rooms.rs"]
mod rooms;
