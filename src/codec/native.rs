//! roomchat's own transport: one JSON object per WebSocket text frame,
//! `{"event": …, "data": …, "ack": n}` both ways.

use super::{Inbound, Outgoing};
use crate::protocol;

/// A client's text frame.
pub(crate) fn decode(text: &str) -> Inbound {
    Inbound::Request(protocol::parse_envelope(text))
}

/// A server event as the JSON text of one frame: `ack` sits beside `event`
/// and `data`, as the protocol's examples show it.
pub(crate) fn encode(event: &Outgoing) -> String {
    let data = event.data();
    let mut json = String::with_capacity(data.len() + event.name.len() + 40);
    json.push_str(r#"{"event":""#);
    json.push_str(event.name);
    json.push('"');
    if let Some(ack) = event.ack {
        json.push_str(r#","ack":"#);
        json.push_str(&ack.to_string());
    }
    json.push_str(r#","data":"#);
    json.push_str(data);
    json.push('}');
    json
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ack_sits_beside_event_and_data() {
        let ev = Outgoing::new("ack", &json!({"ok": true}), Some(7));
        assert_eq!(encode(&ev), r#"{"event":"ack","ack":7,"data":{"ok":true}}"#);
        let ev = Outgoing::new("left", &json!({"room": "r"}), None);
        assert_eq!(encode(&ev), r#"{"event":"left","data":{"room":"r"}}"#);
    }
}
