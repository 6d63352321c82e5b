//! roomchat: a real-time, room-based chat server built from threads and
//! channels, with no async runtime.
//!
//! # Layout
//!
//! - [`config`]: flags, environment variables and defaults.
//! - [`server`]: binds both listeners, starts the threads, shuts down.
//! - `http`: the HTTP side on tiny_http: the client's files, `/config.json`, `/api/rooms`, `/metrics`.
//! - `accept`: the WebSocket accept loop and handshake checks; one thread per connection.
//! - `connection`: one client's reader thread and its chat session.
//! - `outbox`: a client's outbound queue and the writer thread that drains it.
//! - `rooms`: the registry of clients and rooms, behind one mutex.
//! - [`protocol`]: frame decoding, validation and event types; pure.
//! - `socketio`: the Socket.IO v4 codec onto the same events.
//! - `metrics`: counters and the Prometheus text format.
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
mod connection;
mod http;
mod metrics;
mod outbox;
mod rooms;
mod socketio;

pub use config::Config;
pub use server::{Server, StartError};

/// Internals the fuzz targets in `fuzz/` drive directly; not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::metrics::Metrics;
    pub use crate::outbox::{Outbound, Outbox, Outgoing};
    pub use crate::rooms::{ClientId, NotInRoom, Registry};
}
