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

use crate::accept::{self, Front, Port};
use crate::auth::{KeyError, Verifier};
use crate::cluster::Cluster;
use crate::config::{Config, Origins};
use crate::http::{self, Assets, Desk};
use crate::metrics::Metrics;
use crate::outbox::Pool;
use crate::polling::Polling;
use crate::shared::{Capacity, Shared};

/// How long shutdown waits for clients to answer their Close before cutting them off.
const CLOSE_GRACE: Duration = Duration::from_millis(1000);

/// Memory maps one thread needs: its stack, the stack's guard page, the
/// signal stack std gives every thread, and that stack's guard.
const MAPS_PER_THREAD: usize = 4;
/// Pending connections the kernel may queue per listener (it caps this at
/// `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 1024;
/// Maps kept for everything else: the binary, libraries, heaps, listeners.
const MAPS_RESERVED: usize = 2048;
/// File descriptors kept for everything but clients' sockets: listeners,
/// standard streams, files served from `--www`, Redis.
const FILES_RESERVED: usize = 64;

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
    /// `--redis`: Redis could not be reached (in 5 seconds), or the URL is bad.
    Redis(String),
    /// v3: the keys in the flags cannot be used (a secret shorter than 32
    /// bytes, a public key file that cannot be read). Exit status 2.
    Auth(KeyError),
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
            StartError::Redis(why) => f.write_str(why),
            StartError::Auth(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Bind { source, .. }
            | StartError::Www { source, .. }
            | StartError::Spawn(source) => Some(source),
            StartError::Redis(_) => None,
            StartError::Auth(why) => Some(why),
        }
    }
}

/// A running server. Dropping it shuts it down.
pub struct Server {
    http_addr: SocketAddr,
    ws_addr: SocketAddr,
    shared: Arc<Shared>,
    desk: Desk,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds both listeners and starts serving.
    pub fn start(config: Config) -> Result<Server, StartError> {
        let assets = open_assets(&config)?;
        let verifier = Verifier::from_config(&config).map_err(StartError::Auth)?;
        let metrics = Arc::new(Metrics::default());
        // A cluster node joins its cluster before it binds: one that cannot
        // reach Redis never prints its banner.
        let cluster = match config.redis {
            Some(_) => Some(
                Cluster::start(&config, Arc::clone(&metrics))
                    .map_err(|e| StartError::Redis(e.to_string()))?,
            ),
            None => None,
        };
        let (http_listener, http_addr) = bind(&config, "HTTP", config.http_port)?;
        let (ws_listener, ws_addr) = bind(&config, "WebSocket", config.ws_port)?;

        // Serving from `--www`, a socket may hold a file open while its
        // answer is written.
        let files_per_socket = if config.www.is_some() { 2 } else { 1 };
        let capacity = capacity(config.max_connections, files_per_socket);
        let origins = Origins::new(config.origins_for(http_addr.port()));
        let handshake_origins =
            Origins::new(config.handshake_origins_for(http_addr.port(), ws_addr.port()));
        let shared = Arc::new(Shared::new(
            config,
            capacity,
            metrics,
            handshake_origins,
            cluster,
            verifier,
        ));
        let (desk, jobs) = Desk::new();
        let site = http::Site {
            shared: Arc::clone(&shared),
            assets,
            origins,
            ws_port: ws_addr.port(),
        };
        let polling = Arc::new(Polling::new(Arc::clone(&shared)));
        let front = Arc::new(Front {
            shared: Arc::clone(&shared),
            desk: desk.clone(),
            polling: Arc::clone(&polling),
        });
        let f = Arc::clone(&front);
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        let mut threads = shared
            .pool
            .start(Pool::workers_for(cores))
            .map_err(StartError::Spawn)?;
        threads.extend([
            spawn("http", move || http::run(jobs, site))?,
            spawn("polling", move || polling.run_timer())?,
            spawn("http-accept", move || {
                accept::run(http_listener, Port::Http, f)
            })?,
            spawn("ws-accept", move || {
                accept::run(ws_listener, Port::WebSocket, front)
            })?,
        ]);
        info!("http on {http_addr}, websocket on {ws_addr}");
        Ok(Server {
            http_addr,
            ws_addr,
            shared,
            desk,
            threads,
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
        // The accept loops block in accept(): a connection of our own wakes each.
        for addr in [self.http_addr, self.ws_addr] {
            let _ = TcpStream::connect_timeout(&loopback(addr), Duration::from_secs(1));
        }
        self.desk.close();
        let shared = &self.shared;
        shared.rooms.leave_cluster();
        shared.rooms.close_all(1001, "server shutting down");
        if !shared.rooms.wait_empty(CLOSE_GRACE) {
            shared.rooms.abort_all();
        }
        // Whatever is still open (page loads, handshakes, stuck writers) is cut.
        shared.sockets.abort_all();
        shared.rooms.wait_empty(Duration::from_millis(300));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        info!("stopped");
    }
}

/// `addr`, or the loopback address if it is the unspecified one.
fn loopback(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
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

/// What the server takes on for `--max-connections` clients, lowered to
/// what the machine's limits hold. Past `vm.max_map_count` a new thread
/// cannot map its stacks and std aborts the process; past the open-file
/// limit accept fails. Refusing a connection at once is the better answer.
fn capacity(configured: usize, files_per_socket: usize) -> Capacity {
    let maps = read_number("/proc/sys/vm/max_map_count");
    // Ask for as many descriptors as the hard limit allows.
    let files = rlimit::increase_nofile_limit(u64::MAX)
        .ok()
        .and_then(|n| usize::try_from(n).ok());
    let fits = |clients: usize| {
        let c = Capacity::for_clients(clients);
        maps.is_none_or(|m| c.threads() * MAPS_PER_THREAD + MAPS_RESERVED <= m)
            && files.is_none_or(|f| c.sockets * files_per_socket + FILES_RESERVED <= f)
    };
    if fits(configured) {
        return Capacity::for_clients(configured);
    }
    // The largest client count that fits, by bisection.
    let (mut fit, mut over) = (0, configured);
    while over - fit > 1 {
        let mid = fit + (over - fit) / 2;
        if fits(mid) {
            fit = mid;
        } else {
            over = mid;
        }
    }
    warn!(
        "serving at most {fit} clients instead of {configured}: vm.max_map_count is {} and the \
         open-file limit {} (`sysctl -w vm.max_map_count=N` and `ulimit -n N` lift these)",
        maps.map_or("unknown".into(), |m| m.to_string()),
        files.map_or("unknown".into(), |f| f.to_string()),
    );
    Capacity::for_clients(fit)
}

fn read_number(path: &str) -> Option<usize> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
