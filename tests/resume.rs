//! Resuming a room after a reconnect, on the in-memory engine. The tests are
//! in `protocol/resume.rs`; the cluster runs them too
//! (`tests/cluster_suites.rs`, `make cluster-test`).

mod common;

use common::engine::Setup;

const SETUP: Setup = Setup::Memory;

#[path = "protocol/resume.rs"]
mod resume;
