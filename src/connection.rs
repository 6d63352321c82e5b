//! One WebSocket client after its handshake, whatever it speaks: this
//! thread reads its frames (tungstenite), has the client's codec decode
//! them and its session act on them, and keeps the heartbeat. It never
//! writes to the socket once the client has a writer: its Pong and Close
//! replies go through the client's outbox like everything else.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use tungstenite::error::ProtocolError;
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::{Error as WsError, Message};

use crate::auth::Identity;
use crate::codec::{engineio, frame, Encoding};
use crate::delivery::{Mailbox, Round};
use crate::outbox::{Outbound, Outbox};
use crate::session::{Client, Flow};
use crate::shared::{Admission, Shared};

/// How long a connection we closed may still send before we close the socket.
const LINGER: Duration = Duration::from_secs(1);

/// A client's WebSocket, read by its own thread. Boxed: it moves through
/// a few frames of that thread's stack, whose every touched page stays
/// resident for the life of the connection.
pub(crate) type Socket = Box<WebSocket<ClientStream>>;

/// A client and its WebSocket, ready for [`run`].
pub(crate) type Attached = (Box<Client>, Socket);

/// Registers a new client whose handshake is done and greets it. `leftover`
/// holds bytes read past the handshake; `admission` is its place under
/// `--max-connections`, given back when the client goes; `identity`, what
/// its handshake proved (v3). None if shutdown began meanwhile (the client
/// got its Close).
///
/// The caller then calls [`run`] from the top of its thread: the frames
/// that led here are gone by then, so the pages of stack this thread keeps
/// resident for the life of the connection are as few as can be.
pub(crate) fn open(
    socket: Arc<TcpStream>,
    leftover: Vec<u8>,
    encoding: Encoding,
    admission: Admission,
    shared: &Arc<Shared>,
    identity: Option<Identity>,
) -> Option<Attached> {
    let socket_for_client = Some(Arc::clone(&socket));
    let Some(client) = Client::register(encoding, socket_for_client, admission, shared, identity)
    else {
        // Shutdown began between the handshake and now: nobody else writes
        // this socket yet, so its Close goes out directly.
        let _ = (&*socket).write_all(&frame::close(1001, "server shutting down"));
        return None;
    };
    let config = &shared.config;
    // Queued only: the first thing `run` does is write it, from the top of
    // the thread's stack.
    match encoding {
        Encoding::Native => client
            .outbox
            .queue(Outbound::Event(client.session.connected())),
        // Socket.IO sends `connected` once the client joins the main namespace.
        Encoding::EngineIo => {
            let open = engineio::open_packet(
                &engineio::new_sid(),
                &[],
                config.ping_interval,
                config.ping_timeout(),
                config.max_message_bytes,
            );
            client.outbox.queue(Outbound::Packet(open.into()));
        }
    }
    let ws = websocket(socket, leftover, Some(Arc::clone(&client.outbox)), shared);
    Some((Box::new(client), ws))
}

/// A WebSocket over `socket`. Its own replies (Pong, Close) go to `outbox`;
/// with none yet (a long-polling client probing its upgrade), straight to
/// the socket, which then has no other writer.
pub(crate) fn websocket(
    socket: Arc<TcpStream>,
    leftover: Vec<u8>,
    outbox: Option<Arc<Outbox>>,
    shared: &Shared,
) -> Socket {
    let config = &shared.config;
    // A writer stuck this long on a peer that reads nothing gives up.
    let _ = socket.set_write_timeout(Some(config.idle_timeout));
    let _ = socket.set_nodelay(true);
    let now = Instant::now();
    let stream = ClientStream {
        socket,
        outbox,
        deadline: now + config.idle_timeout,
        alarm: None,
        idle_timeout: config.idle_timeout,
        ping_interval: config.ping_interval,
        next_ping: now + config.ping_interval,
    };
    Box::new(WebSocket::from_partially_read(
        stream,
        leftover,
        Role::Server,
        Some(shared.ws_config),
    ))
}

/// The one read loop: frames in, decoded by the client's codec, handled by
/// its session, until the connection ends; then the client goes. (Never
/// inlined: its frame is not to sit under the handshake's.)
#[inline(never)]
#[allow(clippy::boxed_local)] // boxed to keep it out of the thread's long-lived frames
pub(crate) fn run(mut client: Box<Client>, mut ws: Socket) {
    client.outbox.wake(&Round::first()); // what `open` (or an upgrade) left queued
    let close = loop {
        // The session's own deadline (v3: the time to authenticate, or the
        // token's expiry) wakes this thread like the heartbeat does.
        ws.get_mut().alarm = client.session.alarm();
        let message = match next_message(&mut ws, client.id()) {
            Ok(message) => message,
            Err(End::Alarm) => match client.session.on_alarm(Instant::now()) {
                Some(close) => {
                    client.session.flush();
                    break Some(close);
                }
                None => continue,
            },
            Err(End::Close(close)) => break close,
        };
        let flow = match message {
            Message::Text(text) => client.receive(&text),
            Message::Binary(_) => client.receive_binary(),
            Message::Close(_) => {
                // Pushes tungstenite's Close reply into the queue.
                let _ = ws.flush();
                break None;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        // The writes the message caused happen here, at the top of this
        // thread's stack, with no lock held.
        client.session.flush();
        if flow == Flow::End {
            // The client is done: answer with a Close, as for any close we start.
            break Some((1000, "client disconnected"));
        }
    };
    // The room hears `userLeft` before the peer reads our Close: by then the
    // server has forgotten the client. Its place frees with its writer.
    let admission = (*client).leave();
    let stream = ws.get_mut();
    match close {
        Some((code, reason)) => stream.close(code, reason),
        // Nothing more will be written (a Close reply to the peer's may be
        // queued): the writer ends after what is queued.
        None => stream.end(),
    }
    // Wait (briefly) for the peer to close after our Close or Close reply,
    // and for the writer to finish (a slow consumer's 1013 waits for its
    // peer to read, up to the write timeout); then cut the socket. A writer
    // never outlives its reader's place among the sockets.
    linger(&stream.socket);
    if let Some(outbox) = &stream.outbox {
        outbox.wait_for_writer(stream.idle_timeout);
    }
    let _ = stream.socket.shutdown(Shutdown::Both);
    drop(admission);
}

/// Why the read loop stopped reading.
pub(crate) enum End {
    /// The connection ends: with a Close of ours (code, reason), or
    /// without (the peer closed, or vanished).
    Close(Option<(u16, &'static str)>),
    /// The session's alarm is due (see `Session::alarm`).
    Alarm,
}

/// The next message, or how the connection ends: closed by the peer,
/// broken, idle past the deadline, or in violation of RFC 6455 (then with
/// a Close carrying the RFC's code).
pub(crate) fn next_message(ws: &mut Socket, id: impl std::fmt::Display) -> Result<Message, End> {
    loop {
        match ws.read() {
            Ok(message) => {
                let stream = ws.get_mut();
                stream.deadline = Instant::now() + stream.idle_timeout;
                return Ok(message);
            }
            // Interrupted: a read with a timeout fails with EINTR after the
            // process was stopped and continued (SIGSTOP, SIGCONT), which
            // must not cost every client its connection.
            Err(WsError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                let stream = ws.get_ref();
                let now = Instant::now();
                if now >= stream.deadline {
                    info!(
                        "client {id} idle for {:?}; dropping it",
                        stream.idle_timeout
                    );
                    return Err(End::Close(Some((1001, "idle timeout"))));
                }
                if stream.alarm.is_some_and(|alarm| now >= alarm) {
                    return Err(End::Alarm);
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
                    Some((code, _)) => warn!("client {id}: {e}; closing with {code}"),
                    None => debug!("client {id}: connection ended: {e}"),
                }
                return Err(End::Close(close));
            }
        }
    }
}

/// After a Close (ours: 1009, 1007, 1002, idle; or our reply to the
/// peer's), reads and drops what the peer still sends, until it closes or
/// `LINGER` passes. Closing a socket
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
pub(crate) struct ClientStream {
    socket: Arc<TcpStream>,
    /// Where writes go; none while the socket has no other writer.
    outbox: Option<Arc<Outbox>>,
    deadline: Instant,
    /// When the reader must look at its session again, if ever.
    alarm: Option<Instant>,
    idle_timeout: Duration,
    ping_interval: Duration,
    next_ping: Instant,
}

impl ClientStream {
    /// From now on, writes go to `outbox` (whose writer writes this socket).
    pub(crate) fn queue_to(&mut self, outbox: Arc<Outbox>) {
        self.outbox = Some(outbox);
    }

    /// Sets the deadline by which a message must arrive.
    pub(crate) fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// Tells the writer that nothing follows what is queued.
    fn end(&mut self) {
        if let Some(outbox) = &self.outbox {
            outbox.control(Outbound::Close(Box::default()));
        }
    }

    /// Queues a Close with `code`: the connection ends after it.
    pub(crate) fn close(&mut self, code: u16, reason: &str) {
        let close = frame::close(code, reason);
        match &self.outbox {
            Some(outbox) => outbox.control(Outbound::Close(close)),
            None => {
                let _ = (&*self.socket).write_all(&close);
            }
        }
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let now = Instant::now();
        if now >= self.next_ping {
            // The reader keeps the heartbeat: it is the thread that wakes
            // anyway, and an idle client has no writer thread to do it.
            if let Some(outbox) = &self.outbox {
                outbox.control(Outbound::Ping);
            }
            self.next_ping = now + self.ping_interval;
        }
        let due = self.alarm.is_some_and(|alarm| now >= alarm);
        if now >= self.deadline || due {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let mut wake = self.deadline.min(self.next_ping);
        if let Some(alarm) = self.alarm {
            wake = wake.min(alarm);
        }
        let wake = wake - now;
        self.socket.set_read_timeout(Some(wake))?;
        (&*self.socket).read(buf)
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.outbox {
            Some(outbox) => {
                outbox.control(Outbound::Raw(buf.into()));
                Ok(buf.len())
            }
            None => (&*self.socket).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
