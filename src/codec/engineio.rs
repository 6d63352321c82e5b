//! Engine.IO 4 + Socket.IO 4, as a codec: packets in, the same requests the
//! native decoder produces out; server events in, packets out. The chat
//! logic never sees this format.
//!
//! Engine.IO packet types: `0` open, `1` close, `2` ping, `3` pong,
//! `4` message, `5` upgrade, `6` noop. A message carries a Socket.IO packet:
//! `0` CONNECT, `1` DISCONNECT, `2` EVENT, `3` ACK, `4` CONNECT_ERROR,
//! `5`/`6` binary EVENT/ACK.

use std::time::Duration;

use std::borrow::Cow;
use std::io::Write;

use serde_json::json;
use serde_json::value::RawValue;

use super::{Inbound, Outgoing};
use crate::protocol::{self, Envelope, ErrorCode, Rejection};

/// Engine.IO's ping packet, which the server sends on every ping interval.
pub(crate) const PING: &str = "2";
/// Socket.IO's DISCONNECT for the main namespace: the server ends the
/// socket (v3: a token that expired), and the client does not reconnect.
pub(crate) const DISCONNECT: &str = "41";

/// One client's decoder: it remembers whether the client has joined the
/// main namespace, before which no event is accepted.
#[derive(Debug)]
pub(crate) struct Decoder {
    sid: String,
    connected: bool,
}

impl Decoder {
    pub(crate) fn new(sid: String) -> Decoder {
        Decoder {
            sid,
            connected: false,
        }
    }

    pub(crate) fn decode<'a>(&mut self, packet: &'a str) -> Inbound<'a> {
        match engine_packet(packet) {
            // The client is done.
            Packet::Close | Packet::Disconnect => Inbound::Close,
            // Pong, echoing any payload (`2probe` → `3probe`).
            Packet::Ping(payload) => Inbound::Reply(format!("3{payload}")),
            Packet::Ignore => Inbound::Ignore,
            Packet::Connect(namespace, auth) if namespace == "/" => {
                if self.connected {
                    return Inbound::Ignore;
                }
                // Connected once the session accepts it (`joined_namespace`):
                // with a key, not before its token verified.
                Inbound::Connect {
                    reply: format!(r#"40{{"sid":"{}"}}"#, self.sid),
                    auth,
                }
            }
            Packet::Connect(namespace, _) => {
                let refusal = json!({"message": "Invalid namespace"});
                Inbound::Reply(format!("44{namespace},{refusal}"))
            }
            Packet::Event(_) if !self.connected => Inbound::Request(Err(Rejection::new(
                ErrorCode::BadRequest,
                "connect to the main namespace (packet 40) first",
            ))),
            Packet::Event(parsed) => Inbound::Request(parsed),
        }
    }

    /// The session accepted the client's CONNECT: events may follow.
    pub(crate) fn joined_namespace(&mut self) {
        self.connected = true;
    }

    /// A binary WebSocket frame: attachments are not supported.
    pub(crate) fn decode_binary(&mut self) -> Inbound<'static> {
        Inbound::Request(Err(Rejection::new(
            ErrorCode::BadRequest,
            "binary packets are not supported",
        )))
    }
}

/// The packet for a server event, appended to `out`: `42["name",data]`, or
/// `43<id>[data]` when it answers a request that asked for an
/// acknowledgement.
pub(crate) fn encode_into(event: &Outgoing, out: &mut Vec<u8>) {
    let _ = match event.ack {
        Some(ack) => write!(out, "43{ack}[{}]", event.data()),
        None => write!(out, r#"42["{}",{}]"#, event.name, event.data()),
    };
}

/// A refused CONNECT: `44{"message": …}`, the client's `connect_error`.
pub(crate) fn connect_error(message: &str) -> String {
    format!("44{}", json!({ "message": message }))
}

/// A new Engine.IO session id: 160 random bits, as hex. Unguessable, since
/// on the HTTP port it is all that ties a long-polling request to its client.
pub(crate) fn new_sid() -> String {
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).expect("the OS gives random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The open packet, the first thing a client reads, offering `upgrades`.
/// The client gives up when no ping came for `pingInterval + pingTimeout`.
pub(crate) fn open_packet(
    sid: &str,
    upgrades: &[&str],
    ping_interval: Duration,
    ping_timeout: Duration,
    max_payload: usize,
) -> String {
    /// The open packet's fields, in engine.io's order.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Open<'a> {
        sid: &'a str,
        upgrades: &'a [&'a str],
        ping_interval: u64,
        ping_timeout: u64,
        max_payload: usize,
    }
    let open = Open {
        sid,
        upgrades,
        ping_interval: ping_interval.as_millis() as u64,
        ping_timeout: ping_timeout.as_millis() as u64,
        max_payload,
    };
    format!("0{}", super::to_raw(&open).get())
}

/// What one Engine.IO text packet asks for.
#[derive(Debug)]
enum Packet<'a> {
    Close,
    Ping(String),
    Ignore,
    /// A CONNECT to a namespace, with its payload (`auth`), if any.
    Connect(String, Option<&'a RawValue>),
    Disconnect,
    Event(Result<Envelope<'a>, Rejection>),
}

fn engine_packet(packet: &str) -> Packet<'_> {
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

fn socket_packet(packet: &str) -> Packet<'_> {
    let kind = packet.chars().next();
    let rest = packet.get(1..).unwrap_or("");
    let (namespace, rest) = split_namespace(rest);
    match kind {
        Some('0') => {
            // A payload that is not a JSON object counts as none.
            let auth = serde_json::from_str::<&RawValue>(rest)
                .ok()
                .filter(|raw| raw.get().starts_with('{'));
            Packet::Connect(namespace.to_owned(), auth)
        }
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

/// `[id]["event", data]` → the same envelope a native frame gives, borrowing
/// from the packet.
fn event(rest: &str) -> Result<Envelope<'_>, Rejection> {
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
    let items: Vec<&RawValue> = serde_json::from_str(payload).map_err(|e| {
        let message = if e.is_data() {
            "an event must be a JSON array".to_owned()
        } else {
            format!("event is not valid JSON: {e}")
        };
        Rejection::new(ErrorCode::BadJson, message).with_ack(ack)
    })?;
    let name: Option<String> = items
        .first()
        .and_then(|raw| serde_json::from_str(raw.get()).ok());
    let Some(name) = name else {
        return Err(Rejection::new(ErrorCode::BadRequest, "an event needs a name").with_ack(ack));
    };
    let mut data = items.get(1).map(|raw| Cow::Borrowed(*raw));
    // `socket.emit("chatMessage", "hi")`, as the original client sends it.
    if name == "chatMessage" {
        if let Some(text) = data
            .as_deref()
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        {
            data = Some(Cow::Owned(super::to_raw(&json!({ "text": text }))));
        }
    }
    Ok(Envelope {
        event: Cow::Owned(name),
        data,
        ack,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(packet: &str) -> Result<Envelope<'_>, Rejection> {
        match engine_packet(packet) {
            Packet::Event(e) => e,
            other => panic!("{packet}: {other:?}"),
        }
    }

    #[test]
    fn engine_and_socket_packets() {
        assert!(matches!(engine_packet("1"), Packet::Close));
        assert!(matches!(engine_packet("2"), Packet::Ping(p) if p.is_empty()));
        assert!(matches!(engine_packet("2probe"), Packet::Ping(p) if p == "probe"));
        assert!(matches!(engine_packet("41/admin,"), Packet::Ignore));
        assert!(matches!(engine_packet("3"), Packet::Ignore));
        assert!(matches!(engine_packet("40"), Packet::Connect(n, None) if n == "/"));
        assert!(matches!(
            engine_packet(r#"40{"token":"x"}"#),
            Packet::Connect(n, Some(auth)) if n == "/" && auth.get() == r#"{"token":"x"}"#
        ));
        assert!(matches!(engine_packet("40[1]"), Packet::Connect(_, None)));
        assert!(matches!(engine_packet("40/admin,"), Packet::Connect(n, _) if n == "/admin"));
        assert!(matches!(engine_packet("41"), Packet::Disconnect));
    }

    #[test]
    fn events_become_envelopes() {
        let data = |e: &Envelope<'_>| e.data.as_deref().map(RawValue::get).map(str::to_owned);
        let e = ev(r#"42["joinRoom",{"username":"a","room":"r"}]"#).unwrap();
        assert_eq!((e.event.as_ref(), e.ack), ("joinRoom", None));
        let e = ev(r#"4217["chatMessage","hi"]"#).unwrap();
        assert_eq!(
            (data(&e), e.ack),
            (Some(r#"{"text":"hi"}"#.into()), Some(17))
        );
        assert_eq!(data(&ev(r#"42["leaveRoom"]"#).unwrap()), None);
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
    fn the_decoder_wants_the_main_namespace_first() {
        let mut d = Decoder::new("7".into());
        let refused =
            |i: Inbound| matches!(i, Inbound::Request(Err(r)) if r.code == ErrorCode::BadRequest);
        assert!(refused(d.decode(r#"42["leaveRoom"]"#)));
        assert!(
            matches!(d.decode("40"), Inbound::Connect { reply, .. } if reply == r#"40{"sid":"7"}"#)
        );
        assert!(
            matches!(d.decode("40"), Inbound::Connect { .. }),
            "a refused CONNECT may be tried again"
        );
        d.joined_namespace();
        assert!(matches!(d.decode("40"), Inbound::Ignore));
        assert!(matches!(
            d.decode(r#"42["leaveRoom"]"#),
            Inbound::Request(Ok(_))
        ));
        assert!(matches!(d.decode("2probe"), Inbound::Reply(r) if r == "3probe"));
        assert!(matches!(d.decode("40/admin,"), Inbound::Reply(r) if r.starts_with("44/admin,")));
        assert!(matches!(d.decode("41"), Inbound::Close));
        assert!(refused(d.decode_binary()));
    }

    fn encode(event: &Outgoing) -> String {
        let mut out = Vec::new();
        encode_into(event, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn server_events_encode_as_event_or_ack_packets() {
        let e = Outgoing::new("userLeft", &json!({"room": "r"}), None);
        assert_eq!(encode(&e), r#"42["userLeft",{"room":"r"}]"#);
        let e = Outgoing::new("ack", &json!({"ok": true}), Some(4));
        assert_eq!(encode(&e), r#"434[{"ok":true}]"#);
    }

    #[test]
    fn session_ids_are_long_and_fresh() {
        let (a, b) = (new_sid(), new_sid());
        assert_eq!(a.len(), 40);
        assert_ne!(a, b);
    }

    #[test]
    fn the_open_packet_keeps_engine_ios_order() {
        let open = open_packet(
            "9",
            &[],
            Duration::from_secs(25),
            Duration::from_secs(35),
            100,
        );
        assert_eq!(
            open,
            r#"0{"sid":"9","upgrades":[],"pingInterval":25000,"pingTimeout":35000,"maxPayload":100}"#
        );
    }
}
