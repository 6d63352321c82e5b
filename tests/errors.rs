//! Bad input, on the in-memory engine. The tests are in
//! `protocol/errors.rs`; the cluster runs them too
//! (`tests/cluster_suites.rs`, `make cluster-test`).

mod common;

use common::engine::Setup;

const SETUP: Setup = Setup::Memory;

#[path = "protocol/errors.rs"]
mod errors;
