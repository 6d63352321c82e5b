//! One client after its handshake: this thread reads and handles its frames
//! and keeps the heartbeat; a writer thread (see `outbox.rs`) writes what is
//! queued for it. The two share the socket; the reader never writes to it.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use tungstenite::error::ProtocolError;
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::{Error as WsError, Message};

use crate::outbox::{Outbound, Outbox, Outgoing, Transport};
use crate::protocol::{self, ClientEvent, ConnectedData, Envelope, ErrorCode, Limits, Rejection};
use crate::rooms::ClientId;
use crate::server::Shared;

/// Serves a client whose handshake is done, until it goes. `leftover` holds
/// bytes read past the handshake. The caller has counted the client in the
/// connection limit; this releases it.
pub fn serve(socket: TcpStream, leftover: Vec<u8>, transport: Transport, shared: &Arc<Shared>) {
    let id = shared.next_client_id();
    let config = &shared.config;
    // A writer stuck this long on a peer that reads nothing gives up.
    let _ = socket.set_write_timeout(Some(config.idle_timeout));
    let _ = socket.set_nodelay(true);
    let socket = Arc::new(socket);
    let outbox = Outbox::new(Arc::clone(&socket), transport, Arc::clone(&shared.metrics));
    info!("client {id} connected ({transport:?})");

    let connected = ConnectedData {
        id: &id.to_string(),
        limits: Limits {
            max_message_bytes: config.max_message_bytes,
            max_text_chars: protocol::MAX_TEXT_CHARS,
            rate_limit: config.rate_limit.0,
        },
    };
    let connected = Outgoing::new("connected", &connected, None);
    let mut session = Session::new(id, outbox.clone(), Arc::clone(shared));
    shared.registry.connect(id, outbox.clone());
    match transport {
        Transport::Native => {
            session.outbox.push_now(&connected);
        }
        // Socket.IO sends `connected` once the client joins the main namespace.
        Transport::SocketIo => crate::socketio::open(&session.outbox, &id, config),
    }

    let now = Instant::now();
    let stream = ClientStream {
        socket,
        outbox,
        deadline: now + config.idle_timeout,
        ping_interval: config.ping_interval,
        next_ping: now + config.ping_interval,
    };
    let mut ws =
        WebSocket::from_partially_read(stream, leftover, Role::Server, Some(shared.ws_config));
    match transport {
        Transport::Native => read_native(&mut ws, &mut session),
        Transport::SocketIo => crate::socketio::read_loop(&mut ws, &mut session, &connected),
    }
    shared.registry.disconnect(id);
    shared.metrics.release();
    info!("client {id} disconnected");
    if session.closed_by_us {
        linger(&ws.get_ref().socket);
    }
}

/// Reads native frames until the connection ends.
fn read_native(ws: &mut WebSocket<ClientStream>, session: &mut Session) {
    while let Some(message) = next_message(ws, session) {
        match message {
            Message::Text(text) => session.on_text(&text),
            Message::Binary(_) => {
                session.take_token();
                session.reject(Rejection::new(
                    ErrorCode::BadRequest,
                    "binary frames are not supported",
                ));
            }
            Message::Close(_) => {
                // Pushes tungstenite's Close reply into the queue.
                let _ = ws.flush();
                return;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// The next message, or None when the connection is over: closed by the
/// peer, broken, idle past the deadline, or in violation of RFC 6455 (then
/// a Close with the RFC's code is queued first).
pub fn next_message(ws: &mut WebSocket<ClientStream>, session: &mut Session) -> Option<Message> {
    let idle_timeout = session.shared.config.idle_timeout;
    loop {
        match ws.read() {
            Ok(message) => {
                ws.get_mut().deadline = Instant::now() + idle_timeout;
                return Some(message);
            }
            Err(WsError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= ws.get_ref().deadline {
                    info!(
                        "client {} idle for {idle_timeout:?}; dropping it",
                        session.id
                    );
                    session.close(1001, "idle timeout");
                    return None;
                }
            }
            Err(e) => {
                let close = match &e {
                    // The peer closed TCP without a Close frame: it vanished, no violation.
                    WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
                    WsError::Capacity(_) => Some((1009, "message too big")),
                    WsError::Utf8(_) => Some((1007, "invalid UTF-8")),
                    WsError::Protocol(_) => Some((1002, "protocol error")),
                    _ => None,
                };
                match close {
                    Some((code, reason)) => {
                        warn!("client {}: {e}; closing with {code}", session.id);
                        session.close(code, reason);
                    }
                    None => debug!("client {}: connection ended: {e}", session.id),
                }
                return None;
            }
        }
    }
}

/// How long a connection we closed may still send before we close the socket.
const LINGER: Duration = Duration::from_secs(1);

/// After a Close we started (1009, 1007, 1002, idle), reads and drops what
/// the peer still sends, until it closes or `LINGER` passes. Closing a socket
/// with unread data makes the kernel answer with a reset, which can reach
/// the peer before our Close frame does (a client still sending an oversized
/// message would see a broken pipe instead of 1009).
fn linger(socket: &TcpStream) {
    let deadline = Instant::now() + LINGER;
    let mut sink = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&*socket).read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The socket as the reader's tungstenite sees it. Reads come from the
/// socket; each blocks at most until the next Ping is due or the idle
/// deadline passes (which also stops a peer that trickles bytes). Writes
/// (Pong and Close replies) go to the client's queue, so that only the
/// writer touches the socket.
pub struct ClientStream {
    socket: Arc<TcpStream>,
    outbox: Outbox,
    deadline: Instant,
    ping_interval: Duration,
    next_ping: Instant,
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let now = Instant::now();
        if now >= self.next_ping {
            // The reader keeps the heartbeat: it is the thread that wakes
            // anyway, and an idle client has no writer thread to do it.
            self.outbox.control(Outbound::Ping);
            self.next_ping = now + self.ping_interval;
        }
        if now >= self.deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let wake = self.deadline.min(self.next_ping) - now;
        self.socket.set_read_timeout(Some(wake))?;
        (&*self.socket).read(buf)
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbox.control(Outbound::Raw(buf.into()));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A client's chat state as seen by its reader: checks each request in the
/// protocol's order and hands it to the registry.
pub struct Session {
    pub id: ClientId,
    pub outbox: Outbox,
    pub shared: Arc<Shared>,
    /// We queued a Close: the connection ends on our side.
    closed_by_us: bool,
    bucket: Option<TokenBucket>,
}

impl Session {
    fn new(id: ClientId, outbox: Outbox, shared: Arc<Shared>) -> Session {
        let bucket = shared
            .config
            .rate_limit
            .0
            .map(|rate| TokenBucket::new(rate, Instant::now()));
        Session {
            id,
            outbox,
            shared,
            closed_by_us: false,
            bucket,
        }
    }

    /// Queues a Close with `code`: the connection ends after it.
    pub fn close(&mut self, code: u16, reason: &str) {
        self.outbox.control(Outbound::close(code, reason));
        self.closed_by_us = true;
    }

    /// Every client data frame takes a token; false when none was left.
    pub fn take_token(&mut self) -> bool {
        self.shared.metrics.message_received();
        self.bucket.as_mut().is_none_or(|b| b.take(Instant::now()))
    }

    /// A native text frame.
    fn on_text(&mut self, text: &str) {
        let allowed = self.take_token();
        match protocol::parse_envelope(text) {
            Ok(envelope) => self.on_envelope(envelope, allowed),
            Err(rejection) => self.reject(rejection),
        }
    }

    /// A request whose envelope is sound, from either transport.
    pub fn on_envelope(&mut self, envelope: Envelope, allowed: bool) {
        let Envelope { event, data, ack } = envelope;
        if !allowed {
            let limit = self.shared.config.rate_limit.0.unwrap_or_default();
            let message =
                format!("rate limit of {limit} frames per second exceeded; message dropped");
            return self.reject(Rejection::new(ErrorCode::RateLimited, message).with_ack(ack));
        }
        if !protocol::is_known_event(&event) {
            let message = format!("unknown event {event:?}");
            return self.reject(Rejection::new(ErrorCode::UnknownEvent, message).with_ack(ack));
        }
        let not_in_room = || {
            Rejection::new(
                ErrorCode::NotInRoom,
                format!("{event} needs a room: join one first"),
            )
            .with_ack(ack)
        };
        let request = match protocol::parse_event(&event, data.as_ref()) {
            Ok(request) => request,
            Err(_) if ClientEvent::needs_room(&event) && !self.shared.registry.in_room(self.id) => {
                return self.reject(not_in_room())
            }
            Err(rejection) => return self.reject(rejection.with_ack(ack)),
        };
        let registry = &self.shared.registry;
        let done = match request {
            ClientEvent::JoinRoom { username, room } => {
                registry.join(self.id, &username, &room, ack);
                Ok(())
            }
            ClientEvent::ChatMessage { text } => {
                debug!("client {} says {text:?}", self.id);
                registry.chat(self.id, &text, ack).map(drop)
            }
            ClientEvent::Typing { typing } => registry.typing(self.id, typing, ack),
            ClientEvent::LeaveRoom => registry.leave(self.id, ack),
        };
        if done.is_err() {
            self.reject(not_in_room());
        }
    }

    /// Answers a bad request with an `error` event.
    pub fn reject(&self, rejection: Rejection) {
        debug!(
            "client {}: {} ({})",
            self.id,
            rejection.code.as_str(),
            rejection.message
        );
        self.shared.metrics.error_sent(rejection.code);
        self.outbox
            .push_now(&Outgoing::new("error", &rejection.data(), rejection.ack));
    }
}

/// The rate limit: `rate` tokens a second into a bucket of `2 × rate`, full at the start.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            tokens: 2.0 * f64::from(rate),
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(2.0 * self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_starts_full_at_twice_the_rate_and_refills() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(5, t0);
        assert_eq!((0..12).filter(|_| bucket.take(t0)).count(), 10);
        assert!(!bucket.take(t0 + Duration::from_millis(100)));
        assert!(bucket.take(t0 + Duration::from_millis(300)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..30).filter(|_| bucket.take(later)).count(),
            10,
            "capped at 2 x rate"
        );
    }
}
