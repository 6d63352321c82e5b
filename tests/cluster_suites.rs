//! The protocol suites (`protocol/rooms.rs`, `protocol/errors.rs`, `protocol/resume.rs`, the model
//! of `protocol/properties.rs`) on a cluster of one node and of two, each
//! test with its own redis-server; `tests/rooms.rs` and the others run the
//! same tests on the in-memory engine. Skipped, with a message, where
//! redis-server is not installed.

// Each suite file is loaded once per cluster size, on purpose: the same tests
// with another `SETUP`.
#![expect(clippy::duplicate_mod, reason = "one suite, two cluster sizes")]

mod common;

#[path = "protocol/one_node.rs"]
mod one_node;
#[path = "protocol/two_nodes.rs"]
mod two_nodes;
