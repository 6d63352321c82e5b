//! roomchat: a real-time, room-based chat server built from threads and
//! channels, with no async runtime.
//!
//! # Layers
//!
//! Modules import downward only. Bottom to top:
//!
//! 1. Pure data and codecs, no I/O: [`protocol`] (requests, validation,
//!    event shapes), `codec` (each transport's packets in and out, the
//!    WebSocket frames we write, [`Outgoing`] events encoded once),
//!    [`config`], `metrics`.
//! 2. `rooms`: the registry, a state machine behind one mutex that reaches
//!    clients only through the [`Mailbox`] trait. Beside it, `cluster`: the
//!    other engine (`--redis`), rooms in Redis shared by every node, which
//!    reaches its clients through the same trait.
//! 3. `outbox`: a client's bounded queue and its writer, the one thing that
//!    writes to a client's socket (a `Mailbox`).
//! 4. `shared` (settings, `Rooms`: the seam between the two engines,
//!    metrics, admission), then `session`
//!    (one client's requests, whatever its transport) and `connection` (the
//!    one read loop of a WebSocket client).
//! 5. `accept` (the WebSocket listener and its handshake checks) and `http`
//!    (the page and the small endpoints, on tiny_http).
//! 6. [`server`]: binds, starts the threads, shuts down. `main.rs` sits on top.
//!
//! One chat message goes up this list and back down: `connection` reads a
//! frame, `codec` decodes it, `session` checks it, `rooms` numbers it and
//! queues one shared event for every member, each member's `outbox` writes it.
//!
//! # Public API
//!
//! [`Server`] and [`Config`] run a server (the binary and the tests use
//! them); [`protocol`] is public for the property tests; the hidden
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

pub mod config;
pub mod protocol;
pub mod server;

mod accept;
mod cluster;
mod codec;
mod connection;
mod http;
mod httpconn;
mod metrics;
mod outbox;
mod polling;
mod rooms;
mod session;
mod shared;

pub use codec::Outgoing;
pub use config::Config;
pub use rooms::{Mailbox, Round};
pub use server::{Server, StartError};

/// Internals the fuzz targets in `fuzz/` drive directly; not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::metrics::Metrics;
    pub use crate::rooms::{ClientId, NotInRoom, Overflow, Registry, Wakes};
}
