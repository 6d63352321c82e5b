//! Starting and stopping: binds both listeners, starts the HTTP thread and
//! the WebSocket accept thread, and on shutdown closes every client with 1001.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{info, warn};

use crate::accept;
use crate::config::{Config, Origins};
use crate::http::{self, Assets};
use crate::metrics::Metrics;
use crate::shared::Shared;

/// How long shutdown waits for clients to answer their Close before cutting them off.
const CLOSE_GRACE: Duration = Duration::from_millis(1000);

/// Memory maps one client may need at worst: two threads (reader and
/// writer), each with a stack, its guard page, the signal stack std gives
/// every thread, and that stack's guard.
const MAPS_PER_CLIENT: usize = 8;
/// Pending connections the kernel may queue per listener (it caps this at
/// `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 1024;
/// Maps kept for everything else: the binary, libraries, heaps, listeners.
const MAPS_RESERVED: usize = 2048;

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// A listener could not be bound (address in use, bad host, no permission).
    Bind {
        what: &'static str,
        addr: String,
        source: io::Error,
    },
    /// `--www` is not a readable folder.
    Www { path: PathBuf, source: io::Error },
    /// A thread could not be started.
    Spawn(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { what, addr, source } => {
                write!(f, "cannot bind the {what} listener to {addr}: {source}")
            }
            StartError::Www { path, source } => write!(
                f,
                "cannot serve the client from {}: {source}",
                path.display()
            ),
            StartError::Spawn(source) => write!(f, "cannot start a server thread: {source}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Bind { source, .. }
            | StartError::Www { source, .. }
            | StartError::Spawn(source) => Some(source),
        }
    }
}

/// A running server. Dropping it shuts it down.
pub struct Server {
    http_addr: SocketAddr,
    ws_addr: SocketAddr,
    shared: Arc<Shared>,
    http: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds both listeners and starts serving.
    pub fn start(config: Config) -> Result<Server, StartError> {
        let assets = open_assets(&config)?;
        let (http_listener, http_addr) = bind(&config, "HTTP", config.http_port)?;
        let (ws_listener, ws_addr) = bind(&config, "WebSocket", config.ws_port)?;

        let metrics = Arc::new(Metrics::default());
        let max_connections = connection_budget(config.max_connections);
        let origins = Origins::new(config.origins_for(http_addr.port()));
        let handshake_origins =
            Origins::new(config.handshake_origins_for(http_addr.port(), ws_addr.port()));
        let head_timeout = config.handshake_timeout;
        let shared = Arc::new(Shared::new(
            config,
            max_connections,
            metrics,
            handshake_origins,
        ));
        let http = Arc::new(
            tiny_http::Server::from_listener_with_limits(
                http_listener,
                None,
                tiny_http::HeadLimits {
                    max_head_bytes: accept::MAX_HEAD_BYTES,
                    max_headers: accept::MAX_HEADERS,
                    head_timeout: Some(head_timeout),
                },
            )
            .map_err(|e| StartError::Spawn(io::Error::other(e.to_string())))?,
        );
        let site = http::Site {
            shared: Arc::clone(&shared),
            assets,
            origins,
            ws_port: ws_addr.port(),
        };
        let h = Arc::clone(&http);
        let http_thread = spawn("http", move || http::run(h, site))?;
        let s = Arc::clone(&shared);
        let accept_thread = spawn("ws-accept", move || accept::run(ws_listener, s))?;
        info!("http on {http_addr}, websocket on {ws_addr}");
        Ok(Server {
            http_addr,
            ws_addr,
            shared,
            http,
            threads: vec![http_thread, accept_thread],
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The line printed on startup: both URLs, with the host as configured.
    pub fn banner(&self) -> String {
        let host = crate::config::bracket_ipv6(&self.shared.config.host);
        format!(
            "roomchat listening on http://{host}:{} (websocket ws://{host}:{}/ws)",
            self.http_addr.port(),
            self.ws_addr.port()
        )
    }

    /// Stops accepting, sends every client Close 1001, and waits (briefly)
    /// for them to go.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if !self.shared.stop() {
            return;
        }
        info!("shutting down");
        self.http.unblock();
        // The accept loop blocks in accept(): a connection of our own wakes it.
        let mut wake = self.ws_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let registry = &self.shared.registry;
        registry.close_all(1001, "server shutting down");
        if !registry.wait_empty(CLOSE_GRACE) {
            registry.abort_all();
            registry.wait_empty(Duration::from_millis(300));
        }
        info!("stopped");
    }
}

/// Where the client's files come from: `--www`, checked to be a folder, or
/// the copy built into the binary.
fn open_assets(config: &Config) -> Result<Assets, StartError> {
    let Some(dir) = &config.www else {
        return Ok(Assets::Embedded);
    };
    let error = |source| StartError::Www {
        path: dir.clone(),
        source,
    };
    let root = dir.canonicalize().map_err(error)?;
    if !root.is_dir() {
        return Err(error(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a folder",
        )));
    }
    Ok(Assets::Dir(root))
}

/// Binds one listener and reads back the address it got.
fn bind(
    config: &Config,
    what: &'static str,
    port: u16,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Bind {
        what,
        addr: format!("{}:{port}", crate::config::bracket_ipv6(&config.host)),
        source,
    };
    let listener = listen(&config.host, port).map_err(error)?;
    let addr = listener.local_addr().map_err(error)?;
    Ok((listener, addr))
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StartError> {
    thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map_err(StartError::Spawn)
}

/// Binds with a listen queue of `LISTEN_BACKLOG`. std's `TcpListener::bind`
/// asks for 128: a burst of reconnecting clients (a server restart with
/// every tab open) overflows that, and each dropped SYN costs its client a
/// 1 s retry. socket2 lets us ask for more.
fn listen(host: &str, port: u16) -> io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let mut last = io::Error::new(
        io::ErrorKind::InvalidInput,
        "the host resolves to no address",
    );
    for addr in (host, port).to_socket_addrs()? {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        match socket
            .bind(&addr.into())
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(()) => return Ok(socket.into()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The most clients the kernel's `vm.max_map_count` lets us hold. Past that
/// limit a new thread cannot map its stacks, and std aborts the process
/// rather than run a thread without its stack-overflow guard; refusing the
/// handshake with 503 is the better answer.
fn connection_budget(configured: usize) -> usize {
    let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|text| text.trim().parse::<usize>().ok());
    let Some(limit) = limit else {
        return configured;
    };
    let budget = limit.saturating_sub(MAPS_RESERVED) / MAPS_PER_CLIENT;
    if budget < configured {
        warn!(
            "vm.max_map_count is {limit}: serving at most {budget} clients instead of {configured} \
             (`sysctl -w vm.max_map_count={}` lifts this)",
            configured * MAPS_PER_CLIENT + MAPS_RESERVED
        );
        return budget;
    }
    configured
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
