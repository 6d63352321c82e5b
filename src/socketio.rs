//! The Socket.IO v4 codec (Engine.IO 4 over WebSocket only): turns packets
//! into the same requests the native decoder produces, and server events
//! into packets. The chat logic and the room registry never see it.
//!
//! Engine.IO packet types: `0` open, `1` close, `2` ping, `3` pong, `4` message.
//! A message carries a Socket.IO packet: `0` CONNECT, `1` DISCONNECT,
//! `2` EVENT, `3` ACK, `4` CONNECT_ERROR, `5`/`6` binary EVENT/ACK.

use std::sync::Arc;

use log::debug;
use serde_json::{json, Value};
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

use crate::config::Config;
use crate::connection::{self, ClientStream, Session};
use crate::outbox::{text_frame, Outbound, Outbox, Outgoing};
use crate::protocol::{self, Envelope, ErrorCode, Rejection};
use crate::rooms::ClientId;

/// Sends the Engine.IO open packet, the first frame on the connection.
pub fn open(outbox: &Outbox, id: &ClientId, config: &Config) {
    let ping_interval = config.ping_interval.as_millis() as u64;
    let idle = config.idle_timeout.as_millis() as u64;
    // The client gives up when no ping came for pingInterval + pingTimeout;
    // we give up on it after the idle timeout. Make the two agree.
    let ping_timeout = idle.saturating_sub(ping_interval).max(1000);
    let open = json!({
        "sid": id.to_string(),
        "upgrades": [],
        "pingInterval": ping_interval,
        "pingTimeout": ping_timeout,
        "maxPayload": config.max_message_bytes,
    });
    outbox.control(Outbound::Raw(text_frame(format!("0{open}").as_bytes())));
}

/// The packet for a server event: `42["name",data]`, or `43<id>[data]` when
/// it answers a request that asked for an acknowledgement.
pub fn encode_event(event: &Outgoing) -> String {
    match event.ack {
        Some(ack) => format!("43{ack}[{}]", event.data.get()),
        None => format!(r#"42["{}",{}]"#, event.name, event.data.get()),
    }
}

/// Reads packets until the connection ends. `connected` is queued once the
/// client has connected to the main namespace.
pub fn read_loop(
    ws: &mut WebSocket<ClientStream>,
    session: &mut Session,
    connected: &Arc<Outgoing>,
) {
    let mut joined_namespace = false;
    while let Some(message) = connection::next_message(ws, session) {
        let packet = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                session.take_token();
                session.reject(Rejection::new(
                    ErrorCode::BadRequest,
                    "binary packets are not supported",
                ));
                continue;
            }
            Message::Close(_) => {
                let _ = ws.flush();
                return;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        match engine_packet(&packet) {
            // The client is done: answer with a WebSocket Close, as for any
            // close we start.
            Packet::Close | Packet::Disconnect => {
                return session.close(1000, "client disconnected")
            }
            // Pong, echoing any payload (`2probe` → `3probe`).
            Packet::Ping(payload) => send_raw(&session.outbox, &format!("3{payload}")),
            Packet::Ignore => {}
            Packet::Connect(namespace) if namespace == "/" => {
                if !joined_namespace {
                    joined_namespace = true;
                    send_raw(&session.outbox, &format!(r#"40{{"sid":"{}"}}"#, session.id));
                    session.outbox.push_now(connected);
                }
            }
            Packet::Connect(namespace) => {
                let refusal = json!({"message": "Invalid namespace"});
                send_raw(&session.outbox, &format!("44{namespace},{refusal}"));
            }
            Packet::Event(parsed) => {
                let allowed = session.take_token();
                match parsed {
                    _ if !joined_namespace => session.reject(Rejection::new(
                        ErrorCode::BadRequest,
                        "connect to the main namespace (packet 40) first",
                    )),
                    Ok(envelope) => session.on_envelope(envelope, allowed),
                    Err(rejection) => session.reject(rejection),
                }
            }
        }
    }
}

fn send_raw(outbox: &Outbox, packet: &str) {
    outbox.control(Outbound::Raw(text_frame(packet.as_bytes())));
}

/// What one Engine.IO text packet asks for.
#[derive(Debug, PartialEq)]
enum Packet {
    Close,
    Ping(String),
    Ignore,
    Connect(String),
    Disconnect,
    Event(Result<Envelope, Rejection>),
}

fn engine_packet(packet: &str) -> Packet {
    let mut chars = packet.chars();
    match chars.next() {
        Some('1') => Packet::Close,
        Some('2') => Packet::Ping(chars.as_str().to_owned()),
        Some('3') | Some('6') => Packet::Ignore,
        Some('4') => socket_packet(chars.as_str()),
        _ => Packet::Event(Err(Rejection::new(
            ErrorCode::BadRequest,
            "not an Engine.IO packet we accept",
        ))),
    }
}

fn socket_packet(packet: &str) -> Packet {
    let kind = packet.chars().next();
    let rest = packet.get(1..).unwrap_or("");
    let (namespace, rest) = split_namespace(rest);
    match kind {
        Some('0') => Packet::Connect(namespace.to_owned()),
        // Leaving a namespace we never joined changes nothing.
        Some('1') if namespace != "/" => Packet::Ignore,
        Some('1') => Packet::Disconnect,
        Some('3') => Packet::Ignore,
        Some('2') if namespace != "/" => Packet::Event(Err(Rejection::new(
            ErrorCode::BadRequest,
            format!("namespace {namespace} is not connected"),
        ))),
        Some('2') => Packet::Event(event(rest)),
        Some('5') | Some('6') => Packet::Event(Err(Rejection::new(
            ErrorCode::BadRequest,
            "binary packets are not supported",
        ))),
        _ => Packet::Event(Err(Rejection::new(
            ErrorCode::BadRequest,
            "not a Socket.IO packet we accept",
        ))),
    }
}

/// `/admin,rest` → (`/admin`, `rest`); no namespace means `/`.
fn split_namespace(rest: &str) -> (&str, &str) {
    if rest.starts_with('/') {
        match rest.split_once(',') {
            Some((namespace, rest)) => (namespace, rest),
            None => (rest, ""),
        }
    } else {
        ("/", rest)
    }
}

/// `[id]["event", data]` → the same envelope a native frame gives.
fn event(rest: &str) -> Result<Envelope, Rejection> {
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (id, payload) = rest.split_at(digits);
    let ack = match id {
        "" => None,
        id => Some(
            id.parse::<u64>()
                .ok()
                .filter(|&n| n <= protocol::MAX_ACK)
                .ok_or_else(|| {
                    Rejection::new(
                        ErrorCode::BadRequest,
                        "ack id must be a whole number from 0 to 2^53-1",
                    )
                })?,
        ),
    };
    let value: Value = serde_json::from_str(payload).map_err(|e| {
        Rejection::new(ErrorCode::BadJson, format!("event is not valid JSON: {e}")).with_ack(ack)
    })?;
    let Value::Array(mut items) = value else {
        return Err(
            Rejection::new(ErrorCode::BadJson, "an event must be a JSON array").with_ack(ack),
        );
    };
    if items.is_empty() || !items[0].is_string() {
        return Err(Rejection::new(ErrorCode::BadRequest, "an event needs a name").with_ack(ack));
    }
    let mut data = (items.len() > 1).then(|| items.swap_remove(1));
    let Value::String(event) = items.swap_remove(0) else {
        unreachable!("checked above")
    };
    // `socket.emit("chatMessage", "hi")`, as the original client sends it.
    if let (Some(Value::String(text)), "chatMessage") = (&data, event.as_str()) {
        data = Some(json!({ "text": text }));
    }
    debug!("socket.io event {event:?}");
    Ok(Envelope { event, data, ack })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(packet: &str) -> Result<Envelope, Rejection> {
        match engine_packet(packet) {
            Packet::Event(e) => e,
            other => panic!("{packet}: {other:?}"),
        }
    }

    #[test]
    fn engine_and_socket_packets() {
        assert_eq!(engine_packet("1"), Packet::Close);
        assert_eq!(engine_packet("2"), Packet::Ping(String::new()));
        assert_eq!(engine_packet("2probe"), Packet::Ping("probe".into()));
        assert_eq!(engine_packet("41/admin,"), Packet::Ignore);
        assert_eq!(engine_packet("3"), Packet::Ignore);
        assert_eq!(engine_packet("40"), Packet::Connect("/".into()));
        assert_eq!(
            engine_packet(r#"40{"token":"x"}"#),
            Packet::Connect("/".into())
        );
        assert_eq!(engine_packet("40/admin,"), Packet::Connect("/admin".into()));
        assert_eq!(engine_packet("41"), Packet::Disconnect);
    }

    #[test]
    fn events_become_envelopes() {
        let e = ev(r#"42["joinRoom",{"username":"a","room":"r"}]"#).unwrap();
        assert_eq!((e.event.as_str(), e.ack), ("joinRoom", None));
        let e = ev(r#"4217["chatMessage","hi"]"#).unwrap();
        assert_eq!((e.data, e.ack), (Some(json!({"text": "hi"})), Some(17)));
        assert_eq!(ev(r#"42["leaveRoom"]"#).unwrap().data, None);
        assert_eq!(ev("42[oops").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(ev("423{}").unwrap_err().ack, Some(3));
        assert_eq!(ev("42[5]").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(
            ev(r#"45-["x",{"_placeholder":true,"num":0}]"#)
                .unwrap_err()
                .code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            ev("429007199254740992[\"typing\"]").unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn server_events_encode_as_event_or_ack_packets() {
        let e = Outgoing::new("userLeft", &json!({"room": "r"}), None);
        assert_eq!(encode_event(&e), r#"42["userLeft",{"room":"r"}]"#);
        let e = Outgoing::new("ack", &json!({"ok": true}), Some(4));
        assert_eq!(encode_event(&e), r#"434[{"ok":true}]"#);
    }
}
