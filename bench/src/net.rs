//! A minimal non-blocking WebSocket client on one mio `Poll`: many connections,
//! one thread. Client framing is hand-rolled (masked frames out, unmasked in),
//! so the load generator spends its CPU on the server's frames, not on itself.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::proto::Protocol;

/// The RFC 6455 sample key and its accept value: every handshake sends the same
/// key, so the answer can be checked without SHA-1.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &[u8] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const MAX_HEAD: usize = 16 * 1024;

/// Where to connect: address, Host header, request path, and whether
/// Engine.IO runs inside the WebSocket.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub engine_io: bool,
}

impl Target {
    /// Parses `ws://HOST:PORT[/path]` (or `http://`, as the peers print it).
    /// Native: the path defaults to `/ws`. Socket.IO: a path under
    /// `/socket.io` is kept, any other becomes
    /// `/socket.io/?EIO=4&transport=websocket`, so roomchat's startup line
    /// (`ws://…/ws`) serves for both.
    pub fn parse(url: &str, protocol: Protocol) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| format!("not a ws:// or http:// URL: {url}"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = match protocol {
            Protocol::Native if path.is_empty() || path == "/" => "/ws",
            Protocol::Native => path,
            _ if path.starts_with("/socket.io") => path,
            _ => protocol.default_path(),
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))?;
        Ok(Target {
            addr,
            host: host.to_string(),
            path: path.to_string(),
            engine_io: protocol.engine_io(),
        })
    }

    /// Every `--url`, in order; connection i of a scenario goes to
    /// `targets[i % targets.len()]` (see `Net::connect`).
    pub fn parse_all(urls: &[String], protocol: Protocol) -> Result<Vec<Target>, String> {
        if urls.is_empty() {
            return Err("no server URL".into());
        }
        urls.iter().map(|u| Target::parse(u, protocol)).collect()
    }

    fn request(&self) -> Vec<u8> {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.path, self.host
        )
        .into_bytes()
    }
}

/// Why a connection ended (fields are read through `Debug` in reports).
#[derive(Debug)]
#[allow(dead_code)]
pub enum Closed {
    /// TCP connect failed.
    Connect(io::Error),
    /// The server answered the upgrade with another status (e.g. 503).
    Rejected(u16),
    /// The server sent a Close frame with this code (we did not ask).
    ServerClose(u16),
    /// End of stream or an I/O error before any Close.
    Io(String),
    /// A framing error on the server's side (masked, fragmented, bad head).
    Protocol(&'static str),
    /// We closed it and the server finished the closing handshake.
    Local,
}

/// What a connection reports to its scenario.
pub enum Event<'a> {
    /// Ready for events, with the time since `connect`: the server answered
    /// `101 Switching Protocols` (native), or, over Engine.IO, also sent its
    /// open packet and answered our `40` with `40{sid}`.
    Open(Duration),
    /// One text frame's payload (over Engine.IO: a Socket.IO packet, `42…`
    /// or `43…`; the transport's own packets never come up).
    Text(&'a [u8]),
    /// The connection is gone; its id may be reused after this turn.
    Closed(Closed),
}

/// A scenario: reacts to connection events and may send on any connection.
pub trait Handler {
    fn event(&mut self, net: &mut Net, id: usize, ev: Event<'_>, now: Instant);
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum State {
    Connecting,
    Handshake,
    Open,
    /// We sent Close; frames still arriving are dropped until the server's
    /// Close or end of stream.
    Closing,
}

/// Where an Engine.IO session is (`Off` for native WebSocket connections).
#[derive(PartialEq, Eq, Clone, Copy)]
enum Eio {
    Off,
    /// Upgraded; the server's open packet `0{...}` comes next.
    AwaitOpen,
    /// We sent `40`; waiting for `40{sid}`.
    AwaitConnect,
    Ready,
}

struct Conn {
    stream: TcpStream,
    state: State,
    eio: Eio,
    target: usize,
    started: Instant,
    /// Bytes read but not yet a whole frame (or the whole response head).
    partial: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    dirty: bool,
    /// A v3 token: sent in the upgrade's `Authorization: Bearer` header
    /// (native) or in Socket.IO's CONNECT packet `40{"token":…}`.
    token: Option<Box<str>>,
}

/// Many client connections on one `Poll`. Ids are slab indexes, reused only
/// after the turn in which a connection closed.
pub struct Net {
    poll: Poll,
    events: Events,
    scratch: Vec<u8>,
    /// Each target with its upgrade request.
    targets: Vec<(Target, Vec<u8>)>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    freed_this_turn: Vec<usize>,
    dirty: Vec<usize>,
    pending_failures: Vec<(usize, io::Error)>,
    rng: u64,
    open: usize,
    /// Binary frames received (the protocol never sends them to a client).
    pub binary_frames: u64,
    /// Engine.IO pings answered.
    pub pings: u64,
}

impl Net {
    /// A `Poll` for connections to these targets (at least one).
    pub fn new(targets: &[Target]) -> io::Result<Net> {
        if targets.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no target"));
        }
        Ok(Net {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            scratch: vec![0; 256 * 1024],
            targets: targets.iter().map(|t| (t.clone(), t.request())).collect(),
            conns: Vec::new(),
            free: Vec::new(),
            freed_this_turn: Vec::new(),
            dirty: Vec::new(),
            pending_failures: Vec::new(),
            rng: 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()),
            open: 0,
            binary_frames: 0,
            pings: 0,
        })
    }

    /// Connections not yet closed (connecting ones included).
    pub fn live(&self) -> usize {
        self.open
    }

    /// Starts a TCP connect to target `t` (modulo the number of targets:
    /// pass a member's index to deal members round-robin); the upgrade (and
    /// the Engine.IO handshake) follows by itself. Returns the id. A failure
    /// is reported as an event on the next turn, never here.
    pub fn connect(&mut self, t: usize) -> usize {
        self.connect_with_token(t, None)
    }

    /// `connect`, proving an identity with `token` (protocol v3): in the
    /// upgrade's `Authorization` header, or over Engine.IO in the CONNECT
    /// packet, as the protocol's clients do.
    pub fn connect_with_token(&mut self, t: usize, token: Option<&str>) -> usize {
        let t = t % self.targets.len();
        let id = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        self.open += 1;
        match TcpStream::connect(self.targets[t].0.addr) {
            Ok(mut stream) => {
                let reg = self.poll.registry().register(
                    &mut stream,
                    Token(id),
                    Interest::READABLE | Interest::WRITABLE,
                );
                let _ = stream.set_nodelay(true);
                self.conns[id] = Some(Conn {
                    stream,
                    state: State::Connecting,
                    eio: Eio::Off,
                    target: t,
                    started: Instant::now(),
                    partial: Vec::new(),
                    wbuf: Vec::new(),
                    wpos: 0,
                    dirty: false,
                    token: token.map(Into::into),
                });
                if let Err(e) = reg {
                    self.pending_failures.push((id, e));
                }
            }
            Err(e) => self.pending_failures.push((id, e)),
        }
        id
    }

    /// Queues a masked text frame; it is written at the end of this turn.
    pub fn send_text(&mut self, id: usize, payload: &[u8]) {
        self.send_frame(id, 0x1, payload);
    }

    /// Starts the closing handshake (Close 1000); `Closed::Local` follows.
    pub fn close(&mut self, id: usize) {
        let open = matches!(
            self.conns.get(id),
            Some(Some(c)) if c.state == State::Open
        );
        if open {
            self.send_frame(id, 0x8, &1000u16.to_be_bytes());
            if let Some(Some(c)) = self.conns.get_mut(id) {
                c.state = State::Closing;
            }
        }
    }

    /// Drops a connection at once, without a closing handshake or an event.
    pub fn abort(&mut self, id: usize) {
        if let Some(slot) = self.conns.get_mut(id) {
            if let Some(mut c) = slot.take() {
                let _ = self.poll.registry().deregister(&mut c.stream);
                self.open -= 1;
                self.freed_this_turn.push(id);
            }
        }
    }

    /// Closes every connection politely, waiting at most `within` for the
    /// server to finish the closing handshakes; the rest are dropped.
    pub fn close_all<H: Handler>(&mut self, h: &mut H, within: Duration) {
        for id in 0..self.conns.len() {
            self.close(id);
        }
        let end = Instant::now() + within;
        while self.open > 0 && Instant::now() < end {
            if self.turn(h, Some(Duration::from_millis(10))).is_err() {
                break;
            }
        }
    }

    fn send_frame(&mut self, id: usize, opcode: u8, payload: &[u8]) {
        let key = self.next_mask();
        let Some(Some(c)) = self.conns.get_mut(id) else {
            return;
        };
        if c.state != State::Open && !(c.state == State::Closing && opcode == 0xA) {
            return;
        }
        let w = &mut c.wbuf;
        w.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            w.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            w.push(0x80 | 126);
            w.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            w.push(0x80 | 127);
            w.extend_from_slice(&(len as u64).to_be_bytes());
        }
        w.extend_from_slice(&key);
        let start = w.len();
        w.extend_from_slice(payload);
        for (i, b) in w[start..].iter_mut().enumerate() {
            *b ^= key[i & 3];
        }
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(id);
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift64: masks need not be secret here, only present.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng as u32).to_ne_bytes()
    }

    /// One turn: wait for readiness (at most `timeout`), read and dispatch
    /// every frame, then write everything queued.
    pub fn turn<H: Handler>(&mut self, h: &mut H, timeout: Option<Duration>) -> io::Result<()> {
        let now = Instant::now();
        for (id, e) in std::mem::take(&mut self.pending_failures) {
            if matches!(self.conns.get(id), Some(Some(_))) {
                self.fail(h, id, Closed::Connect(e), now);
            } else {
                self.open -= 1;
                self.freed_this_turn.push(id);
                h.event(self, id, Event::Closed(Closed::Connect(e)), now);
            }
        }
        let timeout = if self.dirty.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        match self.poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        for e in events.iter() {
            let id = e.token().0;
            if e.is_writable() {
                self.on_writable(h, id, now);
            }
            if e.is_readable() || e.is_read_closed() || e.is_error() {
                let drain = e.is_read_closed() || e.is_error();
                self.on_readable(h, id, now, drain);
            }
        }
        self.events = events;
        self.flush_dirty(h, now);
        self.free.append(&mut self.freed_this_turn);
        Ok(())
    }

    /// Writes every queued frame now (also done at the end of each turn).
    pub fn flush_dirty<H: Handler>(&mut self, h: &mut H, now: Instant) {
        while let Some(id) = self.dirty.pop() {
            if let Some(Some(c)) = self.conns.get_mut(id) {
                c.dirty = false;
            }
            self.flush(h, id, now);
        }
    }

    fn on_writable<H: Handler>(&mut self, h: &mut H, id: usize, now: Instant) {
        let Some(Some(c)) = self.conns.get_mut(id) else {
            return;
        };
        if c.state == State::Connecting {
            match c.stream.take_error() {
                Ok(Some(e)) | Err(e) => return self.fail(h, id, Closed::Connect(e), now),
                Ok(None) => {}
            }
            match c.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.fail(h, id, Closed::Connect(e), now),
            }
            c.state = State::Handshake;
            let request = &self.targets[c.target].1;
            match (&c.token, self.targets[c.target].0.engine_io) {
                (Some(token), false) => {
                    // The request ends with the blank line: the header goes before it.
                    c.wbuf.extend_from_slice(&request[..request.len() - 2]);
                    c.wbuf.extend_from_slice(b"Authorization: Bearer ");
                    c.wbuf.extend_from_slice(token.as_bytes());
                    c.wbuf.extend_from_slice(b"\r\n\r\n");
                }
                _ => c.wbuf.extend_from_slice(request),
            }
        }
        self.flush(h, id, now);
    }

    fn flush<H: Handler>(&mut self, h: &mut H, id: usize, now: Instant) {
        let Some(Some(c)) = self.conns.get_mut(id) else {
            return;
        };
        if c.state == State::Connecting {
            return; // the head and anything queued go out once connected
        }
        while c.wpos < c.wbuf.len() {
            match c.stream.write(&c.wbuf[c.wpos..]) {
                Ok(0) => return self.fail(h, id, Closed::Io("write returned 0".into()), now),
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let closing = c.state == State::Closing;
                    let why = if closing {
                        Closed::Local
                    } else {
                        Closed::Io(format!("write: {e}"))
                    };
                    return self.fail(h, id, why, now);
                }
            }
        }
        c.wbuf.clear();
        c.wpos = 0;
        if c.wbuf.capacity() > 64 * 1024 {
            c.wbuf.shrink_to(4096);
        }
    }

    fn on_readable<H: Handler>(&mut self, h: &mut H, id: usize, now: Instant, drain: bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(Some(c)) = self.conns.get_mut(id) {
            if c.state == State::Connecting {
                // Readable before writable: a refused connect shows up here.
                if let Ok(Some(e)) | Err(e) = c.stream.take_error() {
                    self.fail(h, id, Closed::Connect(e), now);
                }
                break;
            }
            match c.stream.read(&mut scratch) {
                Ok(0) => {
                    let why = if c.state == State::Closing {
                        Closed::Local
                    } else {
                        Closed::Io("end of stream".into())
                    };
                    self.fail(h, id, why, now);
                    break;
                }
                Ok(n) => {
                    self.received(h, id, &scratch[..n], now);
                    // A short read drained the socket; with edge-triggered
                    // readiness, data (or a FIN) arriving later raises a new
                    // event. This saves the read that would only say
                    // WouldBlock. A FIN already seen must be read to the end.
                    if n < scratch.len() && !drain {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = if c.state == State::Closing {
                        Closed::Local
                    } else {
                        Closed::Io(format!("read: {e}"))
                    };
                    self.fail(h, id, why, now);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    fn received<H: Handler>(&mut self, h: &mut H, id: usize, data: &[u8], now: Instant) {
        let Some(Some(c)) = self.conns.get_mut(id) else {
            return;
        };
        if c.state == State::Handshake {
            c.partial.extend_from_slice(data);
            let Some(end) = memchr::memmem::find(&c.partial, b"\r\n\r\n") else {
                if c.partial.len() > MAX_HEAD {
                    self.fail(h, id, Closed::Protocol("response head too long"), now);
                }
                return;
            };
            let head = &c.partial[..end];
            let status = head
                .get(9..12)
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(0);
            if status != 101 {
                return self.fail(h, id, Closed::Rejected(status), now);
            }
            if memchr::memmem::find(head, ACCEPT).is_none() {
                return self.fail(h, id, Closed::Protocol("bad Sec-WebSocket-Accept"), now);
            }
            let rest = c.partial.split_off(end + 4);
            c.partial = Vec::new();
            c.state = State::Open;
            if self.targets[c.target].0.engine_io {
                c.eio = Eio::AwaitOpen;
            } else {
                let took = now.saturating_duration_since(c.started);
                h.event(self, id, Event::Open(took), now);
            }
            if !rest.is_empty() {
                self.frames(h, id, rest, now);
            }
            return;
        }
        if c.partial.is_empty() {
            let used = self.parse(h, id, data, now);
            if used < data.len() {
                if let Some(Some(c)) = self.conns.get_mut(id) {
                    c.partial.extend_from_slice(&data[used..]);
                }
            }
        } else {
            let mut buf = std::mem::take(&mut c.partial);
            buf.extend_from_slice(data);
            self.frames(h, id, buf, now);
        }
    }

    /// Parses frames from an owned buffer and keeps what is left over.
    fn frames<H: Handler>(&mut self, h: &mut H, id: usize, mut buf: Vec<u8>, now: Instant) {
        let used = self.parse(h, id, &buf, now);
        if let Some(Some(c)) = self.conns.get_mut(id) {
            buf.drain(..used);
            if buf.capacity() > 256 * 1024 && buf.len() < 4096 {
                buf.shrink_to(4096);
            }
            c.partial = buf;
        }
    }

    /// Dispatches every whole frame in `buf`; returns the bytes consumed.
    fn parse<H: Handler>(&mut self, h: &mut H, id: usize, buf: &[u8], now: Instant) -> usize {
        let mut at = 0;
        loop {
            let b = &buf[at..];
            if b.len() < 2 {
                return at;
            }
            let (fin, opcode, masked) = (b[0] & 0x80 != 0, b[0] & 0x0F, b[1] & 0x80 != 0);
            let (len, head) = match b[1] & 0x7F {
                126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(n), 10)
                }
                126 | 127 => return at,
                n => (u64::from(n), 2),
            };
            if masked {
                self.fail(h, id, Closed::Protocol("masked server frame"), now);
                return buf.len();
            }
            if !fin || opcode == 0 {
                self.fail(h, id, Closed::Protocol("fragmented frame"), now);
                return buf.len();
            }
            let Ok(len) = usize::try_from(len) else {
                self.fail(h, id, Closed::Protocol("frame too long"), now);
                return buf.len();
            };
            if b.len() < head + len {
                return at;
            }
            let payload = &b[head..head + len];
            at += head + len;
            let closing = matches!(self.conns.get(id), Some(Some(c)) if c.state == State::Closing);
            match opcode {
                0x1 if !closing => self.text(h, id, payload, now),
                0x1 => {}
                0x2 => self.binary_frames += 1,
                0x8 => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    if closing {
                        // Let the server close the TCP connection first, so
                        // TIME_WAIT stays on its side, not on our ports.
                        continue;
                    }
                    self.fail(h, id, Closed::ServerClose(code), now);
                    return buf.len();
                }
                0x9 => self.send_frame(id, 0xA, payload),
                _ => {}
            }
            if !matches!(self.conns.get(id), Some(Some(_))) {
                return buf.len();
            }
        }
    }

    /// A text frame: the handler's, or over Engine.IO first the transport's.
    fn text<H: Handler>(&mut self, h: &mut H, id: usize, payload: &[u8], now: Instant) {
        let Some(Some(c)) = self.conns.get_mut(id) else {
            return;
        };
        let (eio, started) = (c.eio, c.started);
        if eio == Eio::Off {
            return h.event(self, id, Event::Text(payload), now);
        }
        match (eio, payload.first()) {
            // Ping (`2`, or `2probe`): answered with the same payload.
            (_, Some(b'2')) => {
                let mut pong = payload.to_vec();
                pong[0] = b'3';
                self.pings += 1;
                self.send_frame(id, 0x1, &pong);
            }
            (Eio::AwaitOpen, Some(b'0')) => {
                c.eio = Eio::AwaitConnect;
                let connect = match &c.token {
                    Some(t) => format!("40{}", serde_json::json!({ "token": &**t })),
                    None => "40".into(),
                };
                self.send_frame(id, 0x1, connect.as_bytes());
            }
            (Eio::AwaitOpen, _) => {
                self.fail(h, id, Closed::Protocol("no Engine.IO open packet"), now)
            }
            (Eio::AwaitConnect, _) if payload.starts_with(b"40") => {
                c.eio = Eio::Ready;
                let took = now.saturating_duration_since(started);
                h.event(self, id, Event::Open(took), now);
            }
            (Eio::AwaitConnect, _) if payload.starts_with(b"44") => {
                self.fail(h, id, Closed::Protocol("Socket.IO connect_error"), now)
            }
            (Eio::AwaitConnect, _) => {}
            (_, Some(b'1')) => self.fail(h, id, Closed::Protocol("Engine.IO close"), now),
            (_, _) if payload.starts_with(b"41") => {
                self.fail(h, id, Closed::Protocol("Socket.IO disconnect"), now)
            }
            (_, Some(b'4')) => h.event(self, id, Event::Text(payload), now),
            _ => {} // pong, noop
        }
    }

    /// Removes a connection and tells the handler why.
    fn fail<H: Handler>(&mut self, h: &mut H, id: usize, why: Closed, now: Instant) {
        if matches!(self.conns.get(id), Some(Some(_))) {
            self.abort(id);
            h.event(self, id, Event::Closed(why), now);
        }
    }
}
