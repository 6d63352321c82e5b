//! What every thread of the server shares: the settings, the registry, the
//! metrics, and the admission of clients up to `--max-connections`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tungstenite::protocol::WebSocketConfig;

use crate::config::{Config, Origins};
use crate::metrics::Metrics;
use crate::rooms::{ClientId, Registry};

pub(crate) struct Shared {
    pub(crate) config: Config,
    /// `--max-connections`, lowered if the kernel's memory-map limit could
    /// not hold that many clients (see `server::connection_budget`).
    pub(crate) max_connections: usize,
    pub(crate) registry: Registry,
    pub(crate) metrics: Arc<Metrics>,
    /// Origins allowed to open a WebSocket (see `Config::handshake_origins_for`).
    pub(crate) handshake_origins: Origins,
    pub(crate) ws_config: WebSocketConfig,
    next_id: AtomicU64,
    stopping: AtomicBool,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        max_connections: usize,
        metrics: Arc<Metrics>,
        handshake_origins: Origins,
    ) -> Shared {
        let ws_config = WebSocketConfig::default()
            // Small reads: a connection's buffer is resident for its whole
            // life, and chat frames are small.
            .read_buffer_size(512)
            .write_buffer_size(0)
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes));
        let registry = Registry::new(config.history, Arc::clone(&metrics));
        registry.reserve_clients(max_connections);
        Shared {
            config,
            max_connections,
            registry,
            metrics,
            handshake_origins,
            ws_config,
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
        }
    }

    pub(crate) fn next_client_id(&self) -> ClientId {
        ClientId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Marks the server as stopping; true for the first caller only.
    pub(crate) fn stop(&self) -> bool {
        !self.stopping.swap(true, Ordering::SeqCst)
    }

    /// A place for one more client, unless `max_connections` are connected.
    pub(crate) fn admit(&self) -> Option<Admission> {
        self.metrics
            .try_admit(self.max_connections)
            .then(|| Admission(Arc::clone(&self.metrics)))
    }
}

/// A client's place under `--max-connections`, given back when dropped:
/// whatever way the client's thread ends, a panic included.
#[derive(Debug)]
pub(crate) struct Admission(Arc<Metrics>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.release();
    }
}
