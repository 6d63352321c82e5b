//! A minimal non-blocking WebSocket client on one mio `Poll`: many connections,
//! one thread. Client framing is hand-rolled (masked frames out, unmasked in),
//! so the load generator spends its CPU on the server's frames, not on itself.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// The RFC 6455 sample key and its accept value: every handshake sends the same
/// key, so the answer can be checked without SHA-1.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &[u8] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const MAX_HEAD: usize = 16 * 1024;

/// Where to connect: address, Host header and request path.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl Target {
    /// Parses `ws://HOST:PORT[/path]`; the path defaults to `/ws`.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("not a ws:// URL: {url}"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ws"),
        };
        let path = if path == "/" { "/ws" } else { path };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))?;
        Ok(Target {
            addr,
            host: host.to_string(),
            path: path.to_string(),
        })
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
    /// The server answered `101 Switching Protocols`; time since `connect`.
    Open(Duration),
    /// One text frame's payload.
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

struct Conn {
    stream: TcpStream,
    state: State,
    started: Instant,
    /// Bytes read but not yet a whole frame (or the whole response head).
    partial: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    dirty: bool,
}

/// Many client connections on one `Poll`. Ids are slab indexes, reused only
/// after the turn in which a connection closed.
pub struct Net {
    poll: Poll,
    events: Events,
    scratch: Vec<u8>,
    target: Target,
    request: Vec<u8>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    freed_this_turn: Vec<usize>,
    dirty: Vec<usize>,
    pending_failures: Vec<(usize, io::Error)>,
    rng: u64,
    open: usize,
    /// Binary frames received (the protocol never sends them to a client).
    pub binary_frames: u64,
}

impl Net {
    pub fn new(target: &Target) -> io::Result<Net> {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            target.path, target.host
        );
        Ok(Net {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            scratch: vec![0; 256 * 1024],
            target: target.clone(),
            request: request.into_bytes(),
            conns: Vec::new(),
            free: Vec::new(),
            freed_this_turn: Vec::new(),
            dirty: Vec::new(),
            pending_failures: Vec::new(),
            rng: 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()),
            open: 0,
            binary_frames: 0,
        })
    }

    /// Connections not yet closed (connecting ones included).
    pub fn live(&self) -> usize {
        self.open
    }

    /// Starts a TCP connect; the upgrade follows by itself. Returns the id.
    /// A failure is reported as an event on the next turn, never here.
    pub fn connect(&mut self) -> usize {
        let id = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        self.open += 1;
        match TcpStream::connect(self.target.addr) {
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
                    started: Instant::now(),
                    partial: Vec::new(),
                    wbuf: Vec::new(),
                    wpos: 0,
                    dirty: false,
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
            c.wbuf.extend_from_slice(&self.request);
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
            let took = now.saturating_duration_since(c.started);
            h.event(self, id, Event::Open(took), now);
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
                0x1 if !closing => h.event(self, id, Event::Text(payload), now),
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

    /// Removes a connection and tells the handler why.
    fn fail<H: Handler>(&mut self, h: &mut H, id: usize, why: Closed, now: Instant) {
        if matches!(self.conns.get(id), Some(Some(_))) {
            self.abort(id);
            h.event(self, id, Event::Closed(why), now);
        }
    }
}
