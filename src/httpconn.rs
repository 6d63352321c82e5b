//! HTTP/1.1 on a connection's own thread: reading a request head (and a
//! small body) within the size limits and the deadline, and writing an
//! answer within a deadline. Every socket of either port goes through
//! here first; no other thread reads or writes a peer's socket before the
//! WebSocket handshake.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;
use tiny_http::{HTTPVersion, Header, Response, StatusCode};

/// Largest request head we read; past it the answer is 431.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in a request head; past it the answer is 431.
pub(crate) const MAX_HEADERS: usize = 100;
/// After an answer that ends the connection, how long we read off what the
/// peer still sends before closing, and how much at most (see `close`).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// An answer: a tiny_http response over any body.
pub(crate) type Answer = Response<Box<dyn Read + Send>>;

/// A parsed request head: its bytes, and where each part lies in them (one
/// allocation for the whole head, not two for every header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    bytes: Vec<u8>,
    method: Range<usize>,
    /// The request target as sent.
    target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) minor: u8,
    /// Names and values (trimmed) as sent.
    headers: Vec<(Range<usize>, Range<usize>)>,
}

/// Why a request head could not be had.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// Over `MAX_HEAD_BYTES` or `MAX_HEADERS`.
    TooLarge,
    /// The deadline passed; `partial` if some of the head had arrived.
    Timeout {
        partial: bool,
    },
    /// A protocol other than HTTP/1.0 or HTTP/1.1.
    Version,
    Malformed,
    /// The peer closed, or the socket failed.
    Closed,
}

/// What follows a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    None,
    Length(u64),
    /// A chunked body: we read none.
    Unknown,
    /// `Content-Length` given twice with two values, or not a plain number:
    /// where the body ends is not known, so the request is refused (a
    /// proxy that read it otherwise would mix up requests, RFC 9112 §6.3).
    Invalid,
}

impl Head {
    /// Parses a complete head (ending in a blank line).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Head, HeadError> {
        // Room for exactly the lines the head has (the request line counts
        // as one spare), so the common small head costs a small allocation.
        let lines = bytes.windows(2).filter(|w| w == b"\r\n").count();
        if lines > MAX_HEADERS + 2 {
            return Err(HeadError::TooLarge);
        }
        let mut headers = vec![httparse::EMPTY_HEADER; lines.min(MAX_HEADERS)];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(bytes) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(httparse::Error::Version) => return Err(HeadError::Version),
            _ => return Err(HeadError::Malformed),
        }
        let (Some(method), Some(target), Some(minor)) =
            (request.method, request.path, request.version)
        else {
            return Err(HeadError::Malformed);
        };
        // httparse hands back slices of `bytes`: where they start in it.
        let base = bytes.as_ptr() as usize;
        let range = |part: &[u8]| {
            let start = part.as_ptr() as usize - base;
            start..start + part.len()
        };
        let trimmed = |value: &[u8]| {
            let start = value.iter().position(|b| !b.is_ascii_whitespace());
            let end = value.iter().rposition(|b| !b.is_ascii_whitespace());
            match (start, end) {
                (Some(s), Some(e)) => range(&value[s..=e]),
                _ => range(&value[..0]),
            }
        };
        Ok(Head {
            method: range(method.as_bytes()),
            target: range(target.as_bytes()),
            minor,
            headers: request
                .headers
                .iter()
                .map(|h| (range(h.name.as_bytes()), trimmed(h.value)))
                .collect(),
            bytes: bytes.to_vec(),
        })
    }

    /// A part of the head as text ("" if it is not UTF-8).
    fn text(&self, range: &Range<usize>) -> &str {
        std::str::from_utf8(&self.bytes[range.clone()]).unwrap_or("")
    }

    pub(crate) fn method(&self) -> &str {
        self.text(&self.method)
    }

    /// The request target as sent.
    pub(crate) fn target(&self) -> &str {
        self.text(&self.target)
    }

    /// The first value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| self.text(n).eq_ignore_ascii_case(name))
            .map(|(_, v)| self.text(v))
    }

    /// Whether header `name` lists `token` (comma-separated, case-insensitive).
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| self.text(n).eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| self.text(v).split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The path: the query dropped, and the scheme and authority of an
    /// absolute-form target (`GET http://host/x`) too.
    pub(crate) fn path(&self) -> &str {
        let target = self.target();
        let target = target.split_once('?').map_or(target, |(p, _)| p);
        match target.split_once("://") {
            Some((scheme, rest)) if !scheme.contains('/') => {
                rest.find('/').map_or("/", |i| &rest[i..])
            }
            _ => target,
        }
    }

    /// The value of query parameter `key`, as sent (no decoding).
    pub(crate) fn param(&self, key: &str) -> Option<&str> {
        let (_, query) = self.target().split_once('?')?;
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    /// An upgrade to WebSocket, as RFC 6455 asks for one.
    pub(crate) fn is_upgrade(&self) -> bool {
        self.method() == "GET"
            && self.has_token("Upgrade", "websocket")
            && self.has_token("Connection", "upgrade")
    }

    /// Whether the client lets the connection carry another request.
    pub(crate) fn keep_alive(&self) -> bool {
        self.minor == 1 && !self.has_token("Connection", "close")
    }

    pub(crate) fn body(&self) -> Body {
        let lengths: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| self.text(n).eq_ignore_ascii_case("Content-Length"))
            .flat_map(|(_, v)| self.text(v).split(','))
            .map(str::trim)
            .collect();
        let plain = |len: &&str| !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit());
        if !lengths.iter().all(plain) || lengths.windows(2).any(|w| w[0] != w[1]) {
            return Body::Invalid;
        }
        if self.header("Transfer-Encoding").is_some() {
            return Body::Unknown;
        }
        match lengths.first().map(|len| len.parse::<u64>()) {
            None | Some(Ok(0)) => Body::None,
            Some(Ok(n)) => Body::Length(n),
            Some(Err(_)) => Body::Invalid,
        }
    }

    pub(crate) fn version(&self) -> HTTPVersion {
        HTTPVersion(1, self.minor)
    }
}

/// One client connection before (or instead of) a WebSocket: the socket,
/// and what was read past the last head.
pub(crate) struct Conn {
    pub(crate) socket: Arc<TcpStream>,
    /// Bytes read past the last head: a body, the next pipelined request,
    /// or the first WebSocket frames.
    pub(crate) pending: Vec<u8>,
}

impl Conn {
    pub(crate) fn new(socket: Arc<TcpStream>) -> Conn {
        Conn {
            socket,
            pending: Vec::new(),
        }
    }

    /// Reads up to the end of a request head, within `MAX_HEAD_BYTES` and
    /// before `deadline`.
    #[inline(never)]
    pub(crate) fn read_head(&mut self, deadline: Instant) -> Result<Head, HeadError> {
        let mut searched = 0;
        loop {
            if let Some(end) = find_blank_line(&self.pending, searched) {
                if end > MAX_HEAD_BYTES {
                    return Err(HeadError::TooLarge);
                }
                let rest = self.pending.split_off(end);
                let head = Head::parse(&self.pending);
                self.pending = rest;
                return head;
            }
            if self.pending.len() > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            searched = self.pending.len().saturating_sub(3);
            let partial = !self.pending.is_empty();
            match self.fill(deadline) {
                Ok(0) => return Err(HeadError::Closed),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return Err(HeadError::Timeout { partial }),
                Err(_) => return Err(HeadError::Closed),
            }
        }
    }

    /// Reads a body of `len` bytes (the caller checked it is small) before
    /// `deadline`.
    pub(crate) fn read_body(&mut self, len: usize, deadline: Instant) -> io::Result<Vec<u8>> {
        while self.pending.len() < len {
            if self.fill(deadline)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let rest = self.pending.split_off(len);
        Ok(std::mem::replace(&mut self.pending, rest))
    }

    /// One read into `pending`, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.socket.set_read_timeout(Some(left))?;
            let filled = self.pending.len();
            self.pending.resize(filled + 1024, 0);
            let read = (&*self.socket).read(&mut self.pending[filled..]);
            self.pending.truncate(filled + *read.as_ref().unwrap_or(&0));
            match read {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => continue,
                other => return other,
            }
        }
    }

    /// Writes `answer` to a request `head` (HEAD gets no body), finishing
    /// before `deadline`: a peer that does not read holds only this thread,
    /// and only until then.
    pub(crate) fn send(
        &mut self,
        answer: Answer,
        version: HTTPVersion,
        head_only: bool,
        deadline: Instant,
    ) -> io::Result<()> {
        let out = DeadlineWriter {
            socket: &self.socket,
            deadline,
        };
        let mut out = io::BufWriter::with_capacity(8 * 1024, out);
        // A known length is sent as is, never chunked.
        let answer = answer
            .with_chunked_threshold(usize::MAX)
            .with_header(header("Server", "roomchat"));
        answer.raw_print(&mut out, version, &[], head_only, None)?;
        out.flush()
    }

    /// Writes `bytes` before `deadline`.
    pub(crate) fn write_all(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<()> {
        let mut out = DeadlineWriter {
            socket: &self.socket,
            deadline,
        };
        out.write_all(bytes)
    }

    /// Ends the connection politely: half-close, then read off and drop
    /// what the peer still sends (up to `LINGER_BYTES`, for `LINGER`), so
    /// that closing with unread input does not become a reset that could
    /// destroy the answer on its way.
    pub(crate) fn close(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Write);
        let deadline = Instant::now() + LINGER;
        let mut sink = [0u8; 1024];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.socket.set_read_timeout(Some(left)).is_err() {
                return;
            }
            match (&*self.socket).read(&mut sink) {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    }
}

/// A write that never blocks past `deadline`: each write is given the time
/// that is left.
struct DeadlineWriter<'a> {
    socket: &'a TcpStream,
    deadline: Instant,
}

impl Write for DeadlineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.socket.set_write_timeout(Some(left))?;
        let mut socket = self.socket;
        socket.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn find_blank_line(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i + 4)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A header; `name` and `value` are ours and always valid.
pub(crate) fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|()| Header::from_bytes(name.as_bytes(), &b""[..]).expect("a valid name"))
}

/// An answer with a body of bytes.
pub(crate) fn answer(status: u16, content_type: &str, bytes: Vec<u8>) -> Answer {
    let len = bytes.len();
    let body: Box<dyn Read + Send> = Box::new(io::Cursor::new(bytes));
    Response::new(StatusCode(status), Vec::new(), body, Some(len), None)
        .with_header(header("Content-Type", content_type))
}

/// A plain-text answer: `text` and a newline.
pub(crate) fn plain(status: u16, text: &str) -> Answer {
    answer(
        status,
        "text/plain; charset=utf-8",
        format!("{text}\n").into_bytes(),
    )
}

/// Writes the 101 answer that makes the connection a WebSocket.
pub(crate) fn switch_protocols(
    conn: &Conn,
    accept_key: &str,
    deadline: Instant,
) -> std::io::Result<()> {
    use std::io::Write;
    let left = deadline.saturating_duration_since(Instant::now());
    conn.socket
        .set_write_timeout(Some(left.max(Duration::from_millis(1))))?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n\r\n"
    );
    (&*conn.socket).write_all(response.as_bytes())
}

/// An answer given before a request reaches anyone, as data (so the
/// routing above is testable), written by hand: a 426 must carry the
/// `Upgrade` header, which tiny_http's responses leave out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    headers: Vec<(&'static str, &'static str)>,
    content_type: &'static str,
    pub(crate) body: String,
}

impl Refusal {
    pub(crate) fn text(status: u16, body: &str) -> Refusal {
        Refusal {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }

    pub(crate) fn header(mut self, name: &'static str, value: &'static str) -> Refusal {
        self.headers.push((name, value));
        self
    }

    /// Engine.IO's error answer: HTTP 400 (403 for code 4, Forbidden)
    /// with `{"code": n, "message": "..."}`.
    pub(crate) fn engine_io(code: u8, message: &str) -> Refusal {
        Refusal {
            status: if code == 4 { 403 } else { 400 },
            headers: Vec::new(),
            content_type: "application/json",
            body: format!(r#"{{"code":{code},"message":"{message}"}}"#),
        }
    }

    /// As a tiny_http answer, for a connection that goes on (long-polling).
    pub(crate) fn into_answer(self) -> Answer {
        let mut answer = answer(self.status, self.content_type, self.body.into_bytes());
        for (name, value) in self.headers {
            answer.add_header(header(name, value));
        }
        answer
    }

    /// Writes the refusal and ends the connection.
    #[inline(never)]
    pub(crate) fn send(self, conn: &mut Conn, deadline: Instant) {
        use std::fmt::Write as _;
        let status = tiny_http::StatusCode(self.status);
        let mut text = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            status.default_reason_phrase(),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            let _ = write!(text, "{name}: {value}\r\n");
        }
        text.push_str("\r\n");
        text.push_str(&self.body);
        debug!("request refused with {}", self.status);
        if conn.write_all(text.as_bytes(), deadline).is_ok() {
            conn.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        Head::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn heads_parse_into_method_path_query_and_headers() {
        let h = head("GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\r\n");
        assert_eq!((h.method(), h.path(), h.minor), ("GET", "/socket.io/", 1));
        assert_eq!(h.param("transport"), Some("polling"));
        assert_eq!(h.param("EIO"), Some("4"));
        assert_eq!(h.param("sid"), None);
        assert!(h.has_token("connection", "upgrade") && h.keep_alive());
        assert_eq!(
            head("GET http://h:3000/healthz?x HTTP/1.1\r\n\r\n").path(),
            "/healthz"
        );
        assert_eq!(head("GET http://h HTTP/1.1\r\n\r\n").path(), "/");
        assert_eq!(head("GET /x://y HTTP/1.1\r\n\r\n").path(), "/x://y");
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
    }

    #[test]
    fn bodies_are_known_by_their_length() {
        assert_eq!(head("POST / HTTP/1.1\r\n\r\n").body(), Body::None);
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").body(),
            Body::None
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n").body(),
            Body::Length(12)
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").body(),
            Body::Invalid
        );
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(head(chunked).body(), Body::Unknown);
        let twice = "POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 39\r\n\r\n";
        assert_eq!(head(twice).body(), Body::Invalid);
        let same = "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(head(same).body(), Body::Length(5));
        let signed = "POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\n";
        assert_eq!(head(signed).body(), Body::Invalid);
    }

    #[test]
    fn other_protocols_and_too_many_fields_are_refused() {
        for version in ["HTTP/2.0", "HTTP/0.9", "HTTP/3.0", "HTTP/1.2"] {
            let text = format!("GET / {version}\r\n\r\n");
            assert!(
                matches!(Head::parse(text.as_bytes()), Err(HeadError::Version)),
                "{version}"
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            Head::parse(text.as_bytes()),
            Err(HeadError::TooLarge)
        ));
        assert!(matches!(
            Head::parse(b"nonsense\r\n\r\n"),
            Err(HeadError::Malformed)
        ));
    }
}
