//! The room engines the protocol suites run on: the in-memory registry of a
//! single server, or a cluster of one or more nodes on a real redis-server.
//! A suite takes an `Engine` and asks it for clients; a cluster hands them
//! out over its nodes in turn, so the same test body checks that the nodes
//! answer like one server. Ids differ between engines (`7` against
//! `k3v9q2x7ma-7`): compare them with those of the `connected` frames.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use roomchat::Config;

use super::redis::TestRedis;
use super::{Client, HttpResponse, TestServer};

/// Which engine a suite runs on; each suite's root module names one.
#[derive(Clone, Copy, Debug)]
pub enum Setup {
    /// One server, rooms in its memory.
    Memory,
    /// `nodes` servers sharing rooms through one redis-server.
    Cluster { nodes: usize },
}

/// What a test's engines run on: nothing, or one redis-server that several
/// engines share, each under its own key prefix (a redis-server per
/// property-test case would cost more than the case).
pub struct Backend {
    setup: Setup,
    redis: Option<Arc<TestRedis>>,
    engines: AtomicUsize,
}

impl Backend {
    /// None, after a `SKIPPED` message, for a cluster without redis-server.
    pub fn start(setup: Setup) -> Option<Backend> {
        let redis = match setup {
            Setup::Memory => None,
            Setup::Cluster { .. } => Some(Arc::new(TestRedis::start()?)),
        };
        Some(Backend {
            setup,
            redis,
            engines: AtomicUsize::new(0),
        })
    }

    /// A fresh engine: no rooms, no clients. Every server of it gets the
    /// defaults of `Config::ephemeral`, then `adjust`.
    pub fn engine(&self, adjust: impl Fn(&mut Config)) -> Engine {
        let nodes = match (self.setup, &self.redis) {
            (Setup::Cluster { nodes }, Some(redis)) => {
                let prefix = format!("e{}", self.engines.fetch_add(1, Ordering::Relaxed));
                let defaults = Config::ephemeral();
                (0..nodes)
                    .map(|_| {
                        redis.node_with(|c| {
                            // `node_with` turns the rate limit off; the suites
                            // expect the same defaults on every engine.
                            c.rate_limit = defaults.rate_limit;
                            c.redis_prefix = prefix.clone();
                            adjust(c);
                        })
                    })
                    .collect()
            }
            _ => vec![TestServer::with(adjust)],
        };
        Engine {
            nodes,
            next: AtomicUsize::new(0),
            _redis: self.redis.clone(),
        }
    }
}

pub struct Engine {
    /// The servers; one, or a cluster's nodes. Declared before the Redis
    /// so that they shut down while it still answers.
    pub nodes: Vec<TestServer>,
    next: AtomicUsize,
    _redis: Option<Arc<TestRedis>>,
}

impl Engine {
    /// An engine with the default settings; None (after `SKIPPED`) for a
    /// cluster without redis-server.
    pub fn start(setup: Setup) -> Option<Engine> {
        Engine::with(setup, |_| {})
    }

    pub fn with(setup: Setup, adjust: impl Fn(&mut Config)) -> Option<Engine> {
        Some(Backend::start(setup)?.engine(adjust))
    }

    /// The next server in turn: a cluster's nodes take turns.
    pub fn node(&self) -> &TestServer {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.nodes[i % self.nodes.len()]
    }

    /// A connected native client, on the next server in turn.
    pub fn client(&self) -> Client {
        self.node().client()
    }

    /// A client already in `room` as `username`, on the next server in turn.
    pub fn member(&self, username: &str, room: &str) -> Client {
        self.node().member(username, room)
    }

    /// `GET path` on the next server in turn.
    pub fn get(&self, path: &str) -> HttpResponse {
        self.node().get(path)
    }

    /// A series of `/metrics`, summed over the servers (the counters are
    /// each node's own). `series` is a name, to sum every label set, or a
    /// name with its labels (`roomchat_errors_total{code="bad_json"}`).
    /// Panics if no server has the series.
    pub fn metric(&self, series: &str) -> u64 {
        let mut found = false;
        let mut sum = 0;
        for node in &self.nodes {
            let body = node.get("/metrics").body;
            for line in body.lines().filter(|l| !l.starts_with('#')) {
                let (name, value) = line.rsplit_once(' ').unwrap();
                if name == series || name.split('{').next() == Some(series) {
                    found = true;
                    sum += value.parse::<u64>().unwrap();
                }
            }
        }
        assert!(found, "no series {series} in /metrics");
        sum
    }
}
