//! roomchat's own transport: one JSON object per WebSocket text frame,
//! `{"event": …, "data": …, "ack": n}` both ways.

use std::io::Write;

use super::{Inbound, Outgoing};
use crate::protocol;

/// A client's text frame.
pub(crate) fn decode(text: &str) -> Inbound<'_> {
    Inbound::Request(protocol::parse_envelope(text))
}

/// A server event as the JSON text of one frame, appended to `out`: `ack`
/// sits beside `event` and `data`, as the protocol's examples show it.
pub(crate) fn encode_into(event: &Outgoing, out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"event":""#);
    out.extend_from_slice(event.name.as_bytes());
    out.push(b'"');
    if let Some(ack) = event.ack {
        let _ = write!(out, r#","ack":{ack}"#);
    }
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(event.data().as_bytes());
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encode(event: &Outgoing) -> String {
        let mut out = Vec::new();
        encode_into(event, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ack_sits_beside_event_and_data() {
        let ev = Outgoing::new("ack", &json!({"ok": true}), Some(7));
        assert_eq!(encode(&ev), r#"{"event":"ack","ack":7,"data":{"ok":true}}"#);
        let ev = Outgoing::new("left", &json!({"room": "r"}), None);
        assert_eq!(encode(&ev), r#"{"event":"left","data":{"room":"r"}}"#);
    }
}
