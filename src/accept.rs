//! The WebSocket listener: accepts TCP connections, gives each a thread,
//! and on it reads and checks the HTTP upgrade request (path, Origin,
//! capacity, deadline) before handing the socket to `connection::serve`.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};
use tungstenite::handshake::derive_accept_key;

use crate::codec::Encoding;
use crate::config::Origins;
use crate::connection;
use crate::shared::Shared;

/// Largest request head we read; past it the answer is 431.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in a request head; past it the answer is 431.
pub(crate) const MAX_HEADERS: usize = 100;
/// Stack for a connection's thread, which reads and parses its frames.
/// Only the pages touched count in RSS; serde_json may recurse 128 levels
/// deep on hostile input, which needs room in debug builds.
const READER_STACK: usize = 512 * 1024;

/// Accepts until the server stops. Each connection gets its own thread.
pub(crate) fn run(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping() {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors or memory: back off instead of spinning.
                warn!("websocket accept failed: {e}");
                thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let accepted = Instant::now();
        let shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("ws-conn".into())
            .stack_size(READER_STACK)
            .spawn(move || handle(stream, accepted, &shared));
        if let Err(e) = spawned {
            warn!("cannot start a connection thread: {e}");
        }
    }
    debug!("websocket accept loop stopped");
}

/// What the handshake decided.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// `/` and `/ws` speak roomchat's JSON frames; `/socket.io/`, Engine.IO.
    Upgrade {
        encoding: Encoding,
        accept_key: String,
    },
    Refuse(Refusal),
}

/// An HTTP error answer on the WebSocket port.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    status: u16,
    headers: Vec<(&'static str, String)>,
    content_type: &'static str,
    body: String,
}

impl Refusal {
    fn text(status: u16, body: &str) -> Refusal {
        Refusal {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Refusal {
        self.headers.push((name, value.to_owned()));
        self
    }

    /// Engine.IO's error answer: HTTP 400 with `{"code": n, "message": "..."}`.
    fn engine_io(code: u8, message: &str) -> Refusal {
        Refusal {
            status: 400,
            headers: Vec::new(),
            content_type: "application/json",
            body: format!(r#"{{"code":{code},"message":"{message}"}}"#),
        }
    }
}

fn handle(mut stream: TcpStream, accepted: Instant, shared: &Arc<Shared>) {
    let deadline = accepted + shared.config.handshake_timeout;
    let (head, leftover) = match read_head(&mut stream, deadline) {
        Ok(parts) => parts,
        Err(HeadError::TooLarge) => {
            return refuse(&mut stream, Refusal::text(431, "request head too large"))
        }
        Err(HeadError::Timeout) => {
            return refuse(
                &mut stream,
                Refusal::text(408, "request head not complete in time"),
            )
        }
        Err(HeadError::Io(e)) => return debug!("handshake read failed: {e}"),
    };
    let (encoding, accept_key) = match decide(&head, &shared.handshake_origins) {
        Verdict::Refuse(refusal) => return refuse(&mut stream, refusal),
        Verdict::Upgrade {
            encoding,
            accept_key,
        } => (encoding, accept_key),
    };
    if shared.stopping() {
        return refuse(&mut stream, Refusal::text(503, "server is shutting down"));
    }
    let Some(admission) = shared.admit() else {
        return refuse(&mut stream, Refusal::text(503, "too many connections"));
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n\r\n"
    );
    let _ = stream.set_write_timeout(Some(remaining(deadline)));
    if let Err(e) = stream.write_all(response.as_bytes()) {
        return debug!("handshake answer failed: {e}");
    }
    connection::serve(stream, leftover, encoding, admission, shared);
}

#[derive(Debug)]
enum HeadError {
    TooLarge,
    Timeout,
    Io(io::Error),
}

/// Reads up to the end of the request head (`\r\n\r\n`), within
/// `MAX_HEAD_BYTES` and before `deadline`. Returns the head and whatever
/// was read past it.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<(Vec<u8>, Vec<u8>), HeadError> {
    // On the heap, not the stack: a stack page touched here stays resident
    // for the life of the connection.
    let mut buf = Vec::with_capacity(1024);
    loop {
        let left = remaining(deadline);
        if left.is_zero() {
            return Err(HeadError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(HeadError::Io)?;
        let filled = buf.len();
        buf.resize(filled + 1024, 0);
        let n = match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => n,
            Err(e) if retry(&e) => 0,
            Err(e) => return Err(HeadError::Io(e)),
        };
        buf.truncate(filled + n);
        let searched = filled.saturating_sub(3);
        if let Some(end) = buf[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = searched + end + 4;
            if end > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            let leftover = buf.split_off(end);
            return Ok((buf, leftover));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

/// A read that timed out or was interrupted: try again while time is left.
fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Checks a complete request head, in order: parse, path, Socket.IO
/// parameters, upgrade headers, Origin, WebSocket version and key.
fn decide(head: &[u8], origins: &Origins) -> Verdict {
    // Room for exactly the lines the head has (the request line counts as
    // one spare), so the common small head costs a small allocation.
    let lines = head.windows(2).filter(|w| w == b"\r\n").count();
    if lines > MAX_HEADERS + 2 {
        return Verdict::Refuse(Refusal::text(431, "too many header fields"));
    }
    let mut headers = vec![httparse::EMPTY_HEADER; lines.min(MAX_HEADERS)];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Verdict::Refuse(Refusal::text(431, "too many header fields"))
        }
        _ => return Verdict::Refuse(Refusal::text(400, "malformed request")),
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let is_upgrade = request.method == Some("GET")
        && has_token("Upgrade", "websocket")
        && has_token("Connection", "upgrade");

    let encoding = match path {
        "/" | "/ws" => Encoding::Native,
        "/socket.io/" => {
            let param = |key: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            };
            // In engine.io's own order: transport, method, upgrade, version.
            if param("transport") != Some("websocket") {
                return Verdict::Refuse(Refusal::engine_io(0, "Transport unknown"));
            }
            if request.method != Some("GET") {
                return Verdict::Refuse(Refusal::engine_io(2, "Bad handshake method"));
            }
            if !is_upgrade {
                return Verdict::Refuse(Refusal::engine_io(3, "Bad request"));
            }
            if param("EIO") != Some("4") {
                return Verdict::Refuse(Refusal::engine_io(5, "Unsupported protocol version"));
            }
            Encoding::EngineIo
        }
        _ => return Verdict::Refuse(Refusal::text(404, "not found")),
    };
    if !is_upgrade {
        return Verdict::Refuse(
            Refusal::text(
                426,
                "this port speaks WebSocket; the page is on the HTTP port",
            )
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13"),
        );
    }
    if let Some(origin) = header("Origin") {
        if !origins.allows(origin) {
            return Verdict::Refuse(Refusal::text(403, "origin not allowed"));
        }
    }
    if header("Sec-WebSocket-Version").map(str::trim) != Some("13") {
        return Verdict::Refuse(
            Refusal::text(426, "unsupported WebSocket version")
                .header("Sec-WebSocket-Version", "13"),
        );
    }
    match header("Sec-WebSocket-Key").map(str::trim) {
        Some(key) if valid_key(key) => Verdict::Upgrade {
            encoding,
            accept_key: derive_accept_key(key.as_bytes()),
        },
        _ => Verdict::Refuse(Refusal::text(400, "missing or malformed Sec-WebSocket-Key")),
    }
}

/// A key is 16 bytes in base64: 22 characters and `==`.
fn valid_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn refuse(stream: &mut TcpStream, refusal: Refusal) {
    let reason = match refusal.status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut response = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        refusal.status,
        refusal.content_type,
        refusal.body.len()
    );
    for (name, value) in &refusal.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&refusal.body);
    debug!("websocket handshake refused with {}", refusal.status);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(response.as_bytes());
}
