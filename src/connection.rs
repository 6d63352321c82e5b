//! One WebSocket client after its handshake, whatever it speaks: this
//! thread reads its frames (tungstenite), has the client's codec decode
//! them and its session act on them, and keeps the heartbeat. It never
//! writes to the socket: its Pong and Close replies go through the
//! client's outbox like everything else.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use tungstenite::error::ProtocolError;
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::{Error as WsError, Message};

use crate::codec::{engineio, frame, Codec, Encoding};
use crate::outbox::{Outbound, Outbox};
use crate::session::{Flow, Membership, Session};
use crate::shared::{Admission, Shared};

/// How long a connection we closed may still send before we close the socket.
const LINGER: Duration = Duration::from_secs(1);

/// Serves a client whose handshake is done, until it goes. `leftover` holds
/// bytes read past the handshake; `admission` is its place under
/// `--max-connections`, given back when this returns.
pub(crate) fn serve(
    socket: TcpStream,
    leftover: Vec<u8>,
    encoding: Encoding,
    admission: Admission,
    shared: &Arc<Shared>,
) {
    let id = shared.next_client_id();
    let mut codec = Codec::new(encoding, &id.to_string());
    let config = &shared.config;
    // A writer stuck this long on a peer that reads nothing gives up.
    let _ = socket.set_write_timeout(Some(config.idle_timeout));
    let _ = socket.set_nodelay(true);
    let socket = Arc::new(socket);
    let outbox = Arc::new(Outbox::new(
        Arc::clone(&socket),
        encoding,
        Arc::clone(&shared.metrics),
    ));
    info!("client {id} connected ({encoding:?})");
    let mut session = Session::new(id, Arc::clone(&outbox), Arc::clone(shared));
    let membership = Membership::register(id, outbox.clone(), shared);
    if let Codec::EngineIo(_) = codec {
        // Socket.IO sends `connected` once the client joins the main namespace.
        let open = engineio::open_packet(
            &id.to_string(),
            config.ping_interval,
            config.idle_timeout,
            config.max_message_bytes,
        );
        outbox.control(Outbound::Packet(open.into()));
    } else {
        outbox.push_now(&session.connected());
    }

    let now = Instant::now();
    let stream = ClientStream {
        socket,
        outbox,
        deadline: now + config.idle_timeout,
        ping_interval: config.ping_interval,
        next_ping: now + config.ping_interval,
        closed_by_us: false,
    };
    let mut ws =
        WebSocket::from_partially_read(stream, leftover, Role::Server, Some(shared.ws_config));
    read_loop(&mut ws, &mut codec, &mut session, config.idle_timeout);
    drop((membership, admission));
    let stream = ws.get_ref();
    if stream.closed_by_us {
        linger(&stream.socket);
    }
}

/// The one read loop: frames in, decoded by the client's codec, handled by
/// its session, until the connection ends.
fn read_loop(
    ws: &mut WebSocket<ClientStream>,
    codec: &mut Codec,
    session: &mut Session,
    idle_timeout: Duration,
) {
    while let Some(message) = next_message(ws, session, idle_timeout) {
        let inbound = match message {
            Message::Text(text) => codec.decode(&text),
            Message::Binary(_) => codec.decode_binary(),
            Message::Close(_) => {
                // Pushes tungstenite's Close reply into the queue.
                let _ = ws.flush();
                return;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if session.handle(inbound) == Flow::End {
            // The client is done: answer with a Close, as for any close we start.
            return ws.get_mut().close(1000, "client disconnected");
        }
    }
}

/// The next message, or None when the connection is over: closed by the
/// peer, broken, idle past the deadline, or in violation of RFC 6455 (then
/// a Close with the RFC's code is queued first).
fn next_message(
    ws: &mut WebSocket<ClientStream>,
    session: &Session,
    idle_timeout: Duration,
) -> Option<Message> {
    let id = session.id;
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
                    info!("client {id} idle for {idle_timeout:?}; dropping it");
                    ws.get_mut().close(1001, "idle timeout");
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
                        warn!("client {id}: {e}; closing with {code}");
                        ws.get_mut().close(code, reason);
                    }
                    None => debug!("client {id}: connection ended: {e}"),
                }
                return None;
            }
        }
    }
}

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
struct ClientStream {
    socket: Arc<TcpStream>,
    outbox: Arc<Outbox>,
    deadline: Instant,
    ping_interval: Duration,
    next_ping: Instant,
    /// We queued a Close: the connection ends on our side.
    closed_by_us: bool,
}

impl ClientStream {
    /// Queues a Close with `code`: the connection ends after it.
    fn close(&mut self, code: u16, reason: &str) {
        self.outbox
            .control(Outbound::Close(frame::close(code, reason)));
        self.closed_by_us = true;
    }
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
