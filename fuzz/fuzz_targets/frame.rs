//! Arbitrary bytes through the decoding a native connection does.
//!
//! The first byte picks the path: even, the rest is the payload of one text
//! frame (UTF-8 check, then `parse_envelope`, `EventName::parse`,
//! `ClientEvent::parse`, as the native codec and the session do); odd, the rest is a client's raw
//! byte stream into tungstenite with the server's settings, and every
//! message it yields goes the same way. Never a panic; every outcome is an
//! event whose fields keep the protocol's bounds, or one of its error codes
//! (or, for the stream, one of the close codes 1009 / 1007 / 1002).
#![no_main]

use std::io::{self, Cursor, Read, Write};

use libfuzzer_sys::fuzz_target;
use roomchat::protocol::{
    self, ClientEvent, ErrorCode, EventName, Rejection, MAX_ACK, MAX_ROOM_CHARS, MAX_TEXT_CHARS,
    MAX_USERNAME_CHARS,
};
use serde_json::Value;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::{Error as WsError, Message};

/// Small, so that fuzz-sized inputs reach the 1009 limit (the server's floor is 128).
const MAX_MESSAGE_BYTES: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => decode_text(text),
            Err(_) => {} // tungstenite closes with 1007 before the text reaches us
        }
    } else {
        decode_stream(rest);
    }
});

/// One text frame, as `Session::on_text` / `on_envelope` see it (less the
/// rate limit and the room checks, which depend on the connection's state).
fn decode_text(text: &str) {
    let envelope = match protocol::parse_envelope(text) {
        Ok(envelope) => envelope,
        Err(r) => {
            assert!(
                matches!(r.code, ErrorCode::BadJson | ErrorCode::BadRequest),
                "{r:?}"
            );
            if r.code == ErrorCode::BadJson {
                assert_eq!(r.ack, None, "no ack can be read from bad JSON");
            }
            check_rejection(&r);
            return;
        }
    };
    if let Some(ack) = envelope.ack {
        assert!(ack <= MAX_ACK);
    }
    // An unknown event is answered `unknown_event` before its data is read.
    let Some(name) = EventName::parse(&envelope.event) else {
        return;
    };
    let data: Option<Value> = envelope.data.as_deref().map(|d| value_of(d.get()));
    match ClientEvent::parse(name, envelope.data.as_deref()) {
        Ok(event) => check_event(&event, data.as_ref()),
        Err(r) => {
            assert_eq!(r.code, ErrorCode::InvalidField, "{r:?}");
            assert!(
                matches!(
                    r.field,
                    Some("data" | "username" | "room" | "text" | "typing" | "since" | "epoch" | "token")
                ),
                "{r:?}"
            );
            check_rejection(&r);
        }
    }
}

/// `data` as a `Value`, for comparing what was kept. The envelope's check
/// is JSON's grammar; serde_json's `Value` also refuses a number past
/// f64's range (`1e400`), which the server passes over in a field it does
/// not read. Such a field becomes null here; the others are kept.
fn value_of(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| {
        type Fields<'a> = std::collections::BTreeMap<String, &'a serde_json::value::RawValue>;
        match serde_json::from_str::<Fields>(raw) {
            Ok(fields) => Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::from_str(v.get()).unwrap_or(Value::Null)))
                    .collect(),
            ),
            Err(_) => Value::Null, // not an object: no event accepts it
        }
    })
}

/// The error event's data is a JSON object naming its code.
fn check_rejection(r: &Rejection) {
    let data: Value = serde_json::to_value(r.data()).unwrap();
    assert_eq!(data["code"], r.code.as_str());
    assert!(data["message"].is_string());
    assert!(ErrorCode::ALL.contains(&r.code));
}

/// An accepted event keeps every bound, and decoding it again gives it back.
fn check_event(event: &ClientEvent<'_>, data: Option<&Value>) {
    let name = |s: &str, max: usize| {
        let chars = s.chars().count();
        assert!((1..=max).contains(&chars), "{s:?}");
        assert_eq!(s, s.trim(), "names are trimmed");
        assert!(!s.chars().any(char::is_control), "{s:?}");
    };
    let again = match event {
        ClientEvent::JoinRoom { username, room, resume } => {
            let username = username.as_deref().expect("required without a verified identity");
            name(username, MAX_USERNAME_CHARS);
            name(room, MAX_ROOM_CHARS);
            let mut data = serde_json::json!({"username": username, "room": room});
            if let Some(r) = resume {
                assert!(r.since <= roomchat::protocol::MAX_ACK);
                assert!(r.epoch.chars().count() <= roomchat::protocol::MAX_EPOCH_CHARS);
                data["since"] = r.since.into();
                data["epoch"] = r.epoch.as_ref().into();
            }
            serde_json::json!({"event": "joinRoom", "data": data})
        }
        ClientEvent::ChatMessage { text } => {
            let chars = text.chars().count();
            assert!((1..=MAX_TEXT_CHARS).contains(&chars));
            assert!(!text.chars().all(char::is_whitespace));
            assert!(!text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')));
            assert_eq!(
                Some(text.as_ref()),
                data.and_then(|d| d["text"].as_str()),
                "kept exactly"
            );
            serde_json::json!({"event": "chatMessage", "data": {"text": text}})
        }
        ClientEvent::Typing { typing } => {
            serde_json::json!({"event": "typing", "data": {"typing": typing}})
        }
        ClientEvent::LeaveRoom => serde_json::json!({"event": "leaveRoom"}),
        ClientEvent::Authenticate { token } => {
            serde_json::json!({"event": "authenticate", "data": {"token": token}})
        }
    };
    let again = again.to_string();
    let envelope = protocol::parse_envelope(&again).unwrap();
    let name = EventName::parse(&envelope.event).unwrap();
    let decoded = ClientEvent::parse(name, envelope.data.as_deref()).unwrap();
    assert_eq!(&decoded, event);
}

/// The client's side of the socket: reads come from the fuzz input, writes
/// (Pong and Close replies) are dropped.
struct Peer(Cursor<Vec<u8>>);

impl Read for Peer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Peer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn decode_stream(bytes: &[u8]) {
    // As `server.rs` configures it, with a small message limit.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let mut ws = WebSocket::from_raw_socket(
        Peer(Cursor::new(bytes.to_vec())),
        Role::Server,
        Some(config),
    );
    // Every message takes at least two bytes of input.
    for _ in 0..=bytes.len() / 2 + 1 {
        match ws.read() {
            Ok(Message::Text(text)) => {
                assert!(text.len() <= MAX_MESSAGE_BYTES);
                decode_text(&text);
            }
            Ok(Message::Binary(data)) => assert!(data.len() <= MAX_MESSAGE_BYTES), // bad_request
            Ok(Message::Close(_)) => {}
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            // What `connection::next_message` turns into Close 1009, 1007, 1002.
            Err(WsError::Capacity(_) | WsError::Utf8(_) | WsError::Protocol(_)) => return,
            // The input ran out, or the connection is closed.
            Err(WsError::Io(_) | WsError::ConnectionClosed | WsError::AlreadyClosed) => return,
            Err(other) => panic!("unexpected error from a client stream: {other:?}"),
        }
    }
}
