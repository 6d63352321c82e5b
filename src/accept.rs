//! Both listeners. Every accepted socket takes a place among the server's
//! sockets before it gets a thread: past the capacity it is closed at once,
//! so a peer opening sockets cannot make the server take threads. The
//! thread reads request heads (limits, deadline) and sends each where it
//! belongs: a WebSocket upgrade to `connection` (this thread becomes the
//! client's reader), an Engine.IO long-polling request to `polling`, and,
//! on the HTTP port, anything else to the answering thread in `http`.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};
use tungstenite::handshake::derive_accept_key;

use crate::auth::Identity;
use crate::codec::Encoding;
use crate::config::Origins;
use crate::connection::{self, Attached};
use crate::http::{Desk, NoAnswer};
use crate::httpconn::{plain, switch_protocols, Body, Conn, Head, HeadError, Refusal};
use crate::polling::Polling;
use crate::shared::{Admission, Shared};
use crate::throttle::Throttle;

/// Stack for a connection's thread, which reads and parses its frames.
/// Only the pages touched count in RSS; serde_json may recurse 128 levels
/// deep on hostile input, which needs room in debug builds.
const READER_STACK: usize = 512 * 1024;

/// Which listener a socket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Port {
    /// The page, the small endpoints, and (v2) WebSocket and long-polling.
    Http,
    /// WebSocket handshakes only.
    WebSocket,
}

/// What the connection threads hand requests to.
pub(crate) struct Front {
    pub(crate) shared: Arc<Shared>,
    pub(crate) desk: Desk,
    pub(crate) polling: Arc<Polling>,
}

/// Accepts until the server stops. Each connection gets its own thread.
pub(crate) fn run(listener: TcpListener, port: Port, front: Arc<Front>) {
    // Each failure a peer can cause is logged at most every 10 s, with a count.
    let mut refused = Throttle::new(Duration::from_secs(10));
    let mut failed_accept = Throttle::new(Duration::from_secs(10));
    let mut failed_spawn = Throttle::new(Duration::from_secs(10));
    for socket in listener.incoming() {
        if front.shared.stopping() {
            break;
        }
        let socket = match socket {
            Ok(socket) => Arc::new(socket),
            Err(e) => {
                // Out of file descriptors or memory: back off instead of spinning.
                if let Some(count) = failed_accept.tick() {
                    warn!("{port:?} accept failed ({count} times): {e}");
                }
                thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let accepted = Instant::now();
        let Some(slot) = front.shared.sockets.take(&socket) else {
            // At capacity: no thread, no read, no answer; the peer sees the close.
            if let Some(count) = refused.tick() {
                warn!("{count} connections refused: every socket is taken");
            }
            continue;
        };
        let front = Arc::clone(&front);
        let spawned = thread::Builder::new()
            .name("conn".into())
            .stack_size(READER_STACK)
            .spawn(move || {
                let _slot = slot;
                // A connection that becomes a WebSocket is set up and then
                // read from the top of this thread: every page of stack it
                // touches stays resident for the life of the connection.
                if let Some(upgrade) = serve(socket, accepted, port, &front) {
                    if let Some((client, ws)) = upgrade.link(&front) {
                        connection::run(client, ws);
                    }
                }
            });
        if let Err(e) = spawned {
            if let Some(count) = failed_spawn.tick() {
                warn!("cannot start a connection thread ({count} times): {e}");
            }
        }
    }
    debug!("{port:?} accept loop stopped");
}

/// One socket, on its own thread: request after request until one ends the
/// connection, or makes it a WebSocket (returned, for the caller to run).
/// Each head must be complete by its deadline: `accepted` plus the
/// handshake timeout for the first, the end of the previous answer plus
/// that timeout for the next.
fn serve(socket: Arc<TcpStream>, accepted: Instant, port: Port, front: &Front) -> Option<Upgrade> {
    let shared = &front.shared;
    let timeout = shared.config.handshake_timeout;
    let mut conn = Conn::new(socket);
    let mut deadline = accepted + timeout;
    loop {
        let head = match conn.read_head(deadline) {
            Ok(head) => head,
            Err(e) => {
                refuse_head(&mut conn, e, shared.answer_deadline());
                return None;
            }
        };
        if head.body() == Body::Invalid {
            let refusal = Refusal::text(400, "a Content-Length that cannot be read");
            refusal.send(&mut conn, shared.answer_deadline());
            return None;
        }
        let origins = &shared.handshake_origins;
        let keep_going = match route(&head, port, origins) {
            Route::Upgrade {
                encoding,
                accept_key,
                sid,
            } => {
                let identity = match bearer(&head, encoding, shared) {
                    Ok(identity) => identity,
                    Err(refusal) => {
                        refusal.send(&mut conn, shared.answer_deadline());
                        return None;
                    }
                };
                let hello = Hello {
                    encoding,
                    accept_key,
                    sid,
                    identity,
                };
                return upgrade(conn, hello, deadline, front);
            }
            Route::Polling => front.polling.serve(&mut conn, &head),
            Route::Page => page(&mut conn, head, front),
            Route::Refuse(refusal) => {
                refusal.send(&mut conn, shared.answer_deadline());
                false
            }
        };
        if !keep_going {
            return None;
        }
        deadline = Instant::now() + timeout;
    }
}

/// A head that could not be read gets the status that says why, where the
/// peer may still be listening, and the connection ends.
#[inline(never)]
fn refuse_head(conn: &mut Conn, error: HeadError, deadline: Instant) {
    let refusal = match error {
        HeadError::TooLarge => Refusal::text(431, "request head too large"),
        HeadError::Timeout { partial: true } => {
            Refusal::text(408, "request head not complete in time")
        }
        HeadError::Version => Refusal::text(505, "HTTP/1.0 and HTTP/1.1 only"),
        HeadError::Malformed => Refusal::text(400, "malformed request"),
        // Nothing was sent, or the peer is gone: nobody to tell. (A client
        // about to reuse an idle connection would take a 408 for its answer.)
        HeadError::Timeout { partial: false } | HeadError::Closed => return,
    };
    refusal.send(conn, deadline);
}

/// A request for the answering thread. A body we do not read ends the
/// connection after the answer: its bytes are never read as a request.
#[inline(never)]
fn page(conn: &mut Conn, head: Head, front: &Front) -> bool {
    let shared = &front.shared;
    let keep = head.keep_alive() && head.body() == Body::None && !shared.stopping();
    let (version, head_only) = (head.version(), head.method() == "HEAD");
    let answer = front.desk.ask(head).unwrap_or_else(|why| match why {
        NoAnswer::Busy => plain(503, "server busy, try again"),
        NoAnswer::Stopped => plain(503, "server is shutting down"),
    });
    let sent = conn.send(answer, version, head_only, shared.answer_deadline());
    if sent.is_err() || !keep {
        conn.close();
        return false;
    }
    true
}

/// v3: the identity a native WebSocket handshake proves with
/// `Authorization: Bearer <token>`; none without the header (the client
/// may send `authenticate`), or without a key (the header means nothing
/// then). A bad token: 401, before the upgrade. Socket.IO clients prove
/// theirs in the CONNECT packet instead, whatever headers they send.
pub(crate) fn bearer(
    head: &Head,
    encoding: Encoding,
    shared: &Shared,
) -> Result<Option<Identity>, Refusal> {
    let (Some(verifier), Encoding::Native) = (&shared.verifier, encoding) else {
        return Ok(None);
    };
    let Some(value) = head.header("Authorization") else {
        return Ok(None);
    };
    let unauthorized = |why: &str| {
        Refusal::text(401, why).header("WWW-Authenticate", r#"Bearer error="invalid_token""#)
    };
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(unauthorized(
                "invalid_token: Authorization must be Bearer <token>",
            ))
        }
    };
    verifier.verify(token).map(Some).map_err(|refusal| {
        debug!("handshake refused: {}", refusal.message);
        unauthorized(&format!("{}: {}", refusal.code.as_str(), refusal.message))
    })
}

/// A handshake that passed its checks, and what it asks for.
struct Hello {
    encoding: Encoding,
    accept_key: String,
    sid: Option<String>,
    identity: Option<Identity>,
}

/// A connection becoming a WebSocket.
pub(crate) enum Upgrade {
    /// A new client, admitted and answered `101`.
    Client {
        conn: Conn,
        encoding: Encoding,
        admission: Admission,
        identity: Option<Identity>,
    },
    /// A WebSocket that would take long-polling session `sid` over.
    Takeover {
        conn: Conn,
        sid: String,
        accept_key: String,
        deadline: Instant,
    },
}

impl Upgrade {
    /// The client and its WebSocket, ready to be read.
    fn link(self, front: &Front) -> Option<Attached> {
        match self {
            Upgrade::Client {
                conn,
                encoding,
                admission,
                identity,
            } => connection::open(
                conn.socket,
                conn.pending,
                encoding,
                admission,
                &front.shared,
                identity,
            ),
            Upgrade::Takeover {
                conn,
                sid,
                accept_key,
                deadline,
            } => front.polling.upgrade(conn, &sid, &accept_key, deadline),
        }
    }
}

/// A handshake that passed its checks: a new client (admitted, and answered
/// `101`), or (with `sid`) a long-polling client moving to WebSocket.
#[inline(never)]
fn upgrade(mut conn: Conn, hello: Hello, deadline: Instant, front: &Front) -> Option<Upgrade> {
    let shared = &front.shared;
    let Hello {
        encoding,
        accept_key,
        sid,
        identity,
    } = hello;
    if let Some(sid) = sid {
        return Some(Upgrade::Takeover {
            conn,
            sid,
            accept_key,
            deadline,
        });
    }
    if shared.stopping() {
        let refusal = Refusal::text(503, "server is shutting down");
        refusal.send(&mut conn, shared.answer_deadline());
        return None;
    }
    let Some(admission) = shared.admit() else {
        let refusal = Refusal::text(503, "too many connections");
        refusal.send(&mut conn, shared.answer_deadline());
        return None;
    };
    if let Err(e) = switch_protocols(&conn, &accept_key, deadline) {
        debug!("handshake answer failed: {e}");
        return None;
    }
    Some(Upgrade::Client {
        conn,
        encoding,
        admission,
        identity,
    })
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// A WebSocket handshake that passed every check. `/ws` (and `/` on
    /// the WebSocket port) speaks roomchat's frames; `/socket.io/`,
    /// Engine.IO, and with a `sid` it upgrades a long-polling session.
    Upgrade {
        encoding: Encoding,
        accept_key: String,
        sid: Option<String>,
    },
    /// Engine.IO long-polling (HTTP port).
    Polling,
    /// Everything else on the HTTP port: the answering thread's.
    Page,
    Refuse(Refusal),
}

/// Decides where a complete request head goes, checking a handshake in
/// order: path, Socket.IO parameters, upgrade headers, Origin, WebSocket
/// version and key.
#[inline(never)]
fn route(head: &Head, port: Port, origins: &Origins) -> Route {
    let path = head.path();
    // On the HTTP port the method comes first: any method but these, on
    // any path, is the answering thread's 405.
    let known = match head.method() {
        "GET" | "HEAD" | "OPTIONS" => true,
        "POST" => path == "/socket.io/",
        _ => false,
    };
    if port == Port::Http && !known {
        return Route::Page;
    }
    let encoding = match (path, port) {
        ("/ws", _) | ("/", Port::WebSocket) => Encoding::Native,
        ("/socket.io/", _) => match engine_io_transport(head, port) {
            Ok(Transport::Polling) => return Route::Polling,
            Ok(Transport::Preflight) => return Route::Page,
            Ok(Transport::WebSocket) => Encoding::EngineIo,
            Err(refusal) => return Route::Refuse(refusal),
        },
        (_, Port::Http) => return Route::Page,
        (_, Port::WebSocket) => return Route::Refuse(Refusal::text(404, "not found")),
    };
    if !head.is_upgrade() {
        return Route::Refuse(
            Refusal::text(426, "this path speaks WebSocket only")
                .header("Upgrade", "websocket")
                .header("Sec-WebSocket-Version", "13"),
        );
    }
    if let Some(origin) = head.header("Origin") {
        if !origins.allows(origin) {
            return Route::Refuse(Refusal::text(403, "origin not allowed"));
        }
    }
    if head.header("Sec-WebSocket-Version") != Some("13") {
        return Route::Refuse(
            Refusal::text(426, "unsupported WebSocket version")
                .header("Sec-WebSocket-Version", "13"),
        );
    }
    match head.header("Sec-WebSocket-Key") {
        Some(key) if valid_key(key) => Route::Upgrade {
            encoding,
            accept_key: derive_accept_key(key.as_bytes()),
            // A query on `/ws` is ignored; on `/socket.io/` a `sid` names the
            // long-polling session to take over.
            sid: match encoding {
                Encoding::EngineIo => head.param("sid").map(str::to_owned),
                Encoding::Native => None,
            },
        },
        _ => Route::Refuse(Refusal::text(400, "missing or malformed Sec-WebSocket-Key")),
    }
}

enum Transport {
    Polling,
    WebSocket,
    /// A CORS preflight, which the answering thread takes.
    Preflight,
}

/// The Engine.IO transport a `/socket.io/` request asks for, checked in
/// engine.io's own order: transport, method, upgrade, version. Long-polling
/// is the HTTP port's (its own checks are in `polling`); the WebSocket port
/// knows no polling session.
fn engine_io_transport(head: &Head, port: Port) -> Result<Transport, Refusal> {
    match (head.param("transport"), port) {
        (_, Port::Http) if head.method() == "OPTIONS" => return Ok(Transport::Preflight),
        (Some("polling"), Port::Http) => return Ok(Transport::Polling),
        (Some("websocket"), _) => {}
        _ => return Err(Refusal::engine_io(0, "Transport unknown")),
    }
    if head.method() != "GET" {
        return Err(Refusal::engine_io(2, "Bad handshake method"));
    }
    if !head.is_upgrade() {
        return Err(Refusal::engine_io(3, "Bad request"));
    }
    if head.param("EIO") != Some("4") {
        return Err(Refusal::engine_io(5, "Unsupported protocol version"));
    }
    if port == Port::WebSocket && head.param("sid").is_some() {
        return Err(Refusal::engine_io(1, "Session ID unknown"));
    }
    Ok(Transport::WebSocket)
}

/// A key is 16 bytes in base64: 22 characters and `==`.
fn valid_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn head(target: &str, extra: &str) -> Head {
        let text = format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        );
        Head::parse(text.as_bytes()).unwrap()
    }

    fn origins() -> Origins {
        Origins::new(vec!["http://localhost:3000".into()])
    }

    fn status(route: Route) -> u16 {
        match route {
            Route::Refuse(r) => r.status,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn websocket_paths_upgrade_on_both_ports() {
        let upgrade = |target, port| route(&head(target, ""), port, &origins());
        let native = Route::Upgrade {
            encoding: Encoding::Native,
            accept_key: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
            sid: None,
        };
        assert_eq!(upgrade("/ws?x=1", Port::WebSocket), native);
        assert_eq!(upgrade("/", Port::WebSocket), native);
        assert_eq!(upgrade("/ws", Port::Http), native);
        assert_eq!(upgrade("/", Port::Http), Route::Page);
        assert_eq!(status(upgrade("/ws/", Port::WebSocket)), 404);
        assert!(matches!(
            upgrade("/socket.io/?EIO=4&transport=websocket&sid=abc", Port::Http),
            Route::Upgrade { encoding: Encoding::EngineIo, sid: Some(sid), .. } if sid == "abc"
        ));
    }

    #[test]
    fn refusals_come_in_the_protocols_order() {
        let plain = Head::parse(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(status(route(&plain, Port::WebSocket, &origins())), 426);
        let foreign = head("/ws", "Origin: http://evil.example\r\n");
        assert_eq!(status(route(&foreign, Port::Http, &origins())), 403);
        let own = head("/ws", "Origin: http://localhost:3000\r\n");
        assert!(matches!(
            route(&own, Port::Http, &origins()),
            Route::Upgrade { .. }
        ));
        let bad_key = Head::parse(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: nope\r\n\r\n",
        )
        .unwrap();
        assert_eq!(status(route(&bad_key, Port::WebSocket, &origins())), 400);
    }

    #[test]
    fn engine_io_errors_follow_engine_io() {
        let refusal = |target: &str, port| match route(&head(target, ""), port, &origins()) {
            Route::Refuse(r) => r.body,
            other => panic!("{target}: {other:?}"),
        };
        assert!(
            refusal("/socket.io/?EIO=4&transport=polling", Port::WebSocket).contains(r#""code":0"#)
        );
        assert!(
            refusal("/socket.io/?EIO=3&transport=websocket", Port::Http).contains(r#""code":5"#)
        );
        assert!(refusal(
            "/socket.io/?EIO=4&transport=websocket&sid=x",
            Port::WebSocket
        )
        .contains(r#""code":1"#));
        assert_eq!(
            route(
                &head("/socket.io/?EIO=4&transport=polling", ""),
                Port::Http,
                &origins()
            ),
            Route::Polling
        );
    }
}
