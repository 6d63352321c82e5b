//! Counters and gauges, updated with relaxed atomics on the hot path and
//! rendered in the Prometheus text format for `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

use crate::protocol::ErrorCode;

#[derive(Debug, Default)]
pub struct Metrics {
    connections: AtomicUsize,
    rooms: AtomicUsize,
    messages_received: AtomicU64,
    frames_sent: AtomicU64,
    slow_consumer_disconnects: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
    /// Cluster nodes only (`--redis`): their series exist only there.
    cluster: OnceLock<ClusterMetrics>,
}

#[derive(Debug, Default)]
struct ClusterMetrics {
    redis_up: AtomicBool,
    /// Times the node stopped serving rooms (Redis unusable).
    downs: AtomicU64,
    /// Rooms brought up to date from their log after lost pub/sub messages.
    repairs: AtomicU64,
    /// Rooms whose local members got 1012: state lost, or beyond repair.
    rooms_lost: AtomicU64,
}

impl Metrics {
    /// A client connected.
    pub(crate) fn client_connected(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    /// A client went.
    pub(crate) fn client_gone(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    pub(crate) fn set_rooms(&self, rooms: usize) {
        self.rooms.store(rooms, Relaxed);
    }

    pub(crate) fn message_received(&self) {
        self.messages_received.fetch_add(1, Relaxed);
    }

    pub(crate) fn add_frames_sent(&self, frames: u64) {
        if frames > 0 {
            self.frames_sent.fetch_add(frames, Relaxed);
        }
    }

    pub(crate) fn slow_consumer_disconnect(&self) {
        self.slow_consumer_disconnects.fetch_add(1, Relaxed);
    }

    /// Makes this a cluster node's metrics: `roomchat_redis_up` and the
    /// repair counters appear, and the `unavailable` error code.
    pub(crate) fn enable_cluster(&self) {
        let _ = self.cluster.set(ClusterMetrics::default());
    }

    pub(crate) fn set_redis_up(&self, up: bool) {
        if let Some(c) = self.cluster.get() {
            if c.redis_up.swap(up, Relaxed) && !up {
                c.downs.fetch_add(1, Relaxed);
            }
        }
    }

    pub(crate) fn cluster_repair(&self) {
        if let Some(c) = self.cluster.get() {
            c.repairs.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn cluster_rooms_lost(&self, rooms: u64) {
        if let Some(c) = self.cluster.get() {
            c.rooms_lost.fetch_add(rooms, Relaxed);
        }
    }

    pub(crate) fn error_sent(&self, code: ErrorCode) {
        self.errors[code as usize].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition format, version 0.0.4.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(1024);
        let mut series = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        series(
            "roomchat_connections",
            "gauge",
            "Connected clients, WebSocket and long-polling.",
            self.connections.load(Relaxed) as u64,
        );
        series(
            "roomchat_rooms",
            "gauge",
            "Rooms with at least one member.",
            self.rooms.load(Relaxed) as u64,
        );
        series(
            "roomchat_messages_received_total",
            "counter",
            "Data frames received from clients.",
            self.messages_received.load(Relaxed),
        );
        series(
            "roomchat_frames_sent_total",
            "counter",
            "Data frames written to clients (not Ping, Pong or Close).",
            self.frames_sent.load(Relaxed),
        );
        series(
            "roomchat_slow_consumer_disconnects_total",
            "counter",
            "Clients disconnected because their outbound queue overflowed.",
            self.slow_consumer_disconnects.load(Relaxed),
        );
        let cluster = self.cluster.get();
        if let Some(c) = cluster {
            series(
                "roomchat_redis_up",
                "gauge",
                "1 while Redis answers and this node's channel is subscribed, else 0.",
                u64::from(c.redis_up.load(Relaxed)),
            );
            series(
                "roomchat_redis_down_total",
                "counter",
                "Times this node stopped serving rooms because Redis was unusable.",
                c.downs.load(Relaxed),
            );
            series(
                "roomchat_cluster_repairs_total",
                "counter",
                "Rooms brought up to date from their Redis log after lost events.",
                c.repairs.load(Relaxed),
            );
            series(
                "roomchat_cluster_rooms_lost_total",
                "counter",
                "Rooms whose members on this node were closed with 1012 (state lost in Redis).",
                c.rooms_lost.load(Relaxed),
            );
        }
        out.push_str("# HELP roomchat_errors_total Error events sent, by code.\n");
        out.push_str("# TYPE roomchat_errors_total counter\n");
        for code in ErrorCode::ALL {
            if code == ErrorCode::Unavailable && cluster.is_none() {
                continue; // a single node never sends it
            }
            let value = self.errors[code as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "roomchat_errors_total{{code=\"{}\"}} {value}",
                code.as_str()
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_present_from_the_start() {
        let text = Metrics::default().render();
        for name in [
            "roomchat_connections 0",
            "roomchat_rooms 0",
            "roomchat_messages_received_total 0",
            "roomchat_frames_sent_total 0",
            "roomchat_slow_consumer_disconnects_total 0",
            "roomchat_errors_total{code=\"rate_limited\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == name),
                "{name} missing from\n{text}"
            );
        }
    }

    #[test]
    fn cluster_series_only_on_cluster_nodes() {
        let m = Metrics::default();
        assert!(!m.render().contains("redis") && !m.render().contains("unavailable"));
        m.enable_cluster();
        let text = m.render();
        assert!(text.lines().any(|l| l == "roomchat_redis_up 0"));
        assert!(text.contains("roomchat_errors_total{code=\"unavailable\"} 0"));
        m.set_redis_up(true);
        assert!(m.render().lines().any(|l| l == "roomchat_redis_up 1"));
    }
}
