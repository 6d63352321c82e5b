//! roomchat: a real-time, room-based chat server built from threads and
//! channels, with no async runtime.
//!
//! # Layers
//!
//! Modules import downward only (no module imports one above it, nor one
//! beside it in the same step). Bottom to top:
//!
//! 1. Pure data and codecs, no I/O: [`protocol`] (requests, validation,
//!    and every server event's shape, built through one enum), `codec`
//!    (each transport's packets in and out, the WebSocket frames we write,
//!    [`Outgoing`] events encoded once), [`config`], `metrics`, `throttle`
//!    (logging what a peer can repeat, at most once a period); on them,
//!    [`auth`] (v3: a token checked against the configured keys becomes an
//!    identity).
//! 2. `delivery`: what both room engines share: client ids, the
//!    [`Mailbox`] trait through which they reach clients, pushing one event
//!    to many mailboxes, the roster of every client that shutdown closes,
//!    the clock. On it, side by side: `rooms`, the in-memory registry, a
//!    state machine behind one mutex; and `cluster`, the engine of
//!    `--redis`: rooms in Redis, shared by every node.
//! 3. `outbox`: a client's bounded queue and its writer, the one thing that
//!    writes to a client's socket (a `Mailbox`).
//! 4. `shared` (settings, `Rooms`: the seam between the two engines,
//!    metrics, admission), then `session` (one client's requests, whatever
//!    its transport), then `connection` (the one read loop of a WebSocket
//!    client).
//! 5. `httpconn` (HTTP/1.1 on a socket's own thread: heads in, answers and
//!    refusals out), then `http` (the page and the small endpoints, on
//!    tiny_http) and `polling` (Engine.IO long-polling), then `accept` (both
//!    listeners: each request to where it belongs).
//! 6. [`server`]: binds, starts the threads, shuts down. `main.rs` sits on top.
//!
//! One chat message goes up this list and back down: `connection` reads a
//! frame, `codec` decodes it, `session` checks it, `rooms` numbers it and
//! queues one shared event for every member, each member's `outbox` writes it.
//! In a cluster, `rooms` is replaced by `cluster`: a script in Redis numbers
//! the message, and each node's subscriber builds the same event from the
//! fields Redis publishes.
//!
//! # Public API
//!
//! [`Server`] and [`Config`] run a server (the binary and the tests use
//! them); [`protocol`] is public for the property tests; [`auth`] for
//! `roomchat token` and the fuzz targets; the hidden
//! [`fuzzing`] module lets the fuzz targets drive the registry. Everything
//! else is internal.
//!
//! # Example
//!
//! ```no_run
//! let server = roomchat::Server::start(roomchat::Config::ephemeral()).expect("bind");
//! println!("{}", server.banner());
//! server.shutdown();
//! ```

pub mod auth;
pub mod config;
pub mod protocol;
pub mod server;

mod accept;
mod cluster;
mod codec;
mod connection;
mod delivery;
mod http;
mod httpconn;
mod metrics;
mod outbox;
mod polling;
mod rooms;
mod session;
mod shared;
mod throttle;

pub use codec::Outgoing;
pub use config::Config;
pub use delivery::{Mailbox, Round};
pub use server::{Server, StartError};

/// Internals the fuzz targets in `fuzz/` drive directly; not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::delivery::{ClientId, Overflow, Recorder, Wakes};
    pub use crate::metrics::Metrics;
    pub use crate::rooms::{NotInRoom, Registry};
}
