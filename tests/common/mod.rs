//! Test helpers that read like a small language: a `TestServer` on free
//! ports (shut down on drop), a blocking WebSocket `Client` that speaks the
//! protocol, and raw HTTP for the cases a client library would refuse to send.
#![allow(dead_code)]

pub mod engine;
pub mod identity;
pub mod polling;
pub mod process;
pub mod redis;
pub mod socketio;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use roomchat::{Config, Server};
use serde_json::{json, Value};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// The port of `scheme` ("http://" or "ws://") in the server's startup
/// line, `roomchat listening on http://HOST:PORT (websocket ws://HOST:PORT/ws)`.
pub fn banner_port(line: &str, scheme: &str) -> u16 {
    let at = line
        .find(scheme)
        .unwrap_or_else(|| panic!("{scheme} in {line:?}"));
    let port = line[at + scheme.len()..].split(':').nth(1).unwrap();
    port.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub server: Option<Server>,
    pub http: SocketAddr,
    pub ws: SocketAddr,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::with(|_| {})
    }

    pub fn with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::ephemeral();
        adjust(&mut config);
        let server = Server::start(config).expect("test server starts");
        TestServer {
            http: server.http_addr(),
            ws: server.ws_addr(),
            server: Some(server),
        }
    }

    /// A connected native client, its `connected` frame read.
    pub fn client(&self) -> Client {
        Client::connect(&format!("ws://{}/ws", self.ws))
    }

    /// A client already in `room` as `username`.
    pub fn member(&self, username: &str, room: &str) -> Client {
        let mut c = self.client();
        c.join(username, room);
        c
    }

    /// `GET path` on the HTTP port.
    pub fn get(&self, path: &str) -> HttpResponse {
        self.http_request(&format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ))
    }

    pub fn http_request(&self, raw: &str) -> HttpResponse {
        raw_http(self.http, raw.as_bytes())
    }

    pub fn ws_request(&self, raw: &str) -> HttpResponse {
        raw_http(self.ws, raw.as_bytes())
    }

    /// The value of an unlabelled series in `/metrics`, or the sum of a labelled one.
    pub fn metric(&self, name: &str) -> u64 {
        let body = self.get("/metrics").body;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }
}

/// An upgrade request for `path` on `host`, with extra header lines.
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends raw bytes, reads until the peer closes (or the head of a 101 arrives).
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request).unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer: {e}"),
        }
        if bytes.starts_with(b"HTTP/1.1 101") && bytes.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    parse_http(&bytes)
}

pub fn parse_http(bytes: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub id: String,
    next_ack: u64,
}

impl Client {
    pub fn connect(url: &str) -> Client {
        let mut client = Client::connect_raw(url);
        let connected = client.expect("connected");
        client.id = connected["id"].as_str().unwrap().to_owned();
        client
    }

    /// Connects without reading the `connected` frame.
    pub fn connect_raw(url: &str) -> Client {
        let addr = url.trim_start_matches("ws://").split('/').next().unwrap();
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (ws, _) = tungstenite::client(url, stream).expect("handshake");
        Client::from_socket(ws)
    }

    /// A client on a WebSocket whose handshake is done.
    pub fn from_socket(ws: WebSocket<TcpStream>) -> Client {
        Client {
            ws,
            id: String::new(),
            next_ack: 1,
        }
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).unwrap();
    }

    pub fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string());
    }

    pub fn emit(&mut self, event: &str, data: Value) {
        self.send(json!({"event": event, "data": data}));
    }

    /// The next data frame as JSON; Ping and Pong are skipped. Fails the test on timeout.
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => return serde_json::from_str(&text).unwrap(),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame, which must be `event`; returns its data.
    pub fn expect(&mut self, event: &str) -> Value {
        let frame = self.recv();
        assert_eq!(frame["event"], event, "unexpected frame {frame}");
        frame["data"].clone()
    }

    /// The next frame must be an `error` with `code`; returns the whole frame.
    pub fn expect_error(&mut self, code: &str) -> Value {
        let frame = self.recv();
        assert_eq!(frame["event"], "error", "unexpected frame {frame}");
        assert_eq!(frame["data"]["code"], code, "unexpected error {frame}");
        frame
    }

    /// Sends `event` with a fresh ack and returns every frame up to and
    /// including the reply (an `ack` or an `error` carrying it).
    pub fn request(&mut self, event: &str, data: Value) -> (Vec<Value>, Value) {
        let ack = self.next_ack;
        self.next_ack += 1;
        self.send(json!({"event": event, "data": data, "ack": ack}));
        let mut before = Vec::new();
        loop {
            let frame = self.recv();
            if frame["ack"] == ack {
                return (before, frame);
            }
            before.push(frame);
        }
    }

    /// Sends `event` with an ack and returns the `ack` reply's data, asserting success.
    pub fn ok(&mut self, event: &str, data: Value) -> Value {
        let (_, reply) = self.request(event, data);
        assert_eq!(reply["event"], "ack", "request failed: {reply}");
        reply["data"].clone()
    }

    /// Joins and returns the `joined` data.
    pub fn join(&mut self, username: &str, room: &str) -> Value {
        let (frames, reply) = self.request("joinRoom", json!({"username": username, "room": room}));
        assert_eq!(reply["event"], "ack", "join failed: {reply}");
        let joined = frames
            .iter()
            .find(|f| f["event"] == "joined")
            .expect("joined before the ack");
        joined["data"].clone()
    }

    /// Sends a chat message and returns its `seq` (the echo is consumed too).
    pub fn say(&mut self, text: &str) -> u64 {
        let (frames, reply) = self.request("chatMessage", json!({ "text": text }));
        assert_eq!(reply["event"], "ack", "chat failed: {reply}");
        let seq = reply["data"]["seq"].as_u64().unwrap();
        assert!(frames
            .iter()
            .any(|f| f["event"] == "chatMessage" && f["data"]["seq"] == seq));
        seq
    }

    /// Reads until the server closes; returns the Close frame's code (1005
    /// for a Close without one), or None if the TCP connection just ended.
    pub fn expect_close(&mut self) -> Option<u16> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Close(frame)) => {
                    return Some(frame.map_or(1005, |f: CloseFrame| f.code.into()))
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                    panic!("no close within {WAIT:?}")
                }
                Err(_) => return None,
            }
        }
        panic!("no close within {WAIT:?}");
    }

    /// Asserts that nothing is queued for this client: a request with no
    /// side effects (an unknown event) must be answered by the very next frame.
    pub fn assert_quiet(&mut self) {
        let (frames, reply) = self.request("sync", json!({}));
        assert_eq!(reply["data"]["code"], "unknown_event");
        assert!(frames.is_empty(), "unexpected frames: {frames:?}");
    }
}

/// A WebSocket spoken by hand, for frames a client library refuses to send.
pub struct RawSocket {
    pub stream: TcpStream,
}

impl RawSocket {
    /// Upgrades on `path` and reads the 101 head (and nothing more).
    pub fn upgrade(addr: SocketAddr, path: &str) -> RawSocket {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream
            .write_all(upgrade_request(path, "").as_bytes())
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        RawSocket { stream }
    }

    /// A frame with the given first byte (FIN + opcode), masked unless `masked` is false.
    pub fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n < 65536 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = [0x12, 0x34, 0x56, 0x78];
        if masked {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends a native frame (masked text).
    pub fn send_json(&mut self, frame: Value) {
        self.send(&RawSocket::frame(0x81, frame.to_string().as_bytes(), true));
    }

    /// Sends `joinRoom`; the answers stay unread.
    pub fn join(&mut self, username: &str, room: &str) {
        self.send_json(json!({"event": "joinRoom", "data": {"username": username, "room": room}}));
    }

    /// Reads and discards everything the server sends, on a thread, until the connection ends.
    pub fn drain(&self) -> std::thread::JoinHandle<u64> {
        let mut stream = self.stream.try_clone().unwrap();
        stream.set_read_timeout(None).unwrap();
        std::thread::spawn(move || {
            let mut total = 0;
            let mut buf = [0u8; 65536];
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                total += n as u64;
            }
            total
        })
    }

    /// The next frame: (first byte, payload). None when the connection ended.
    pub fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head).ok()?;
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b).ok()?;
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b).ok()?;
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).ok()?;
        Some((head[0], payload))
    }

    /// Reads frames until a Close; returns its status code.
    pub fn close_code(&mut self) -> Option<u16> {
        while let Some((first, payload)) = self.read_frame() {
            if first & 0x0f == 0x8 {
                return Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }

    /// The next text frame parsed as JSON (skipping control frames).
    pub fn recv_json(&mut self) -> Value {
        loop {
            let (first, payload) = self.read_frame().expect("a frame");
            if first & 0x0f == 0x1 {
                return serde_json::from_slice(&payload).unwrap();
            }
        }
    }
}
