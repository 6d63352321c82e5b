//! The few frames the bench sends, and a fast reader for the ones it receives,
//! in three dialects: roomchat's native JSON frames, roomchat's events over
//! Socket.IO v4, and the seed's events over Socket.IO v4 as the peers speak
//! them. `chatMessage` is picked apart by byte search (the bench chose every
//! string in it); everything else goes through serde_json.
//!
//! Engine.IO itself (the open packet, `40`, pings) is the transport's business:
//! `net` handles it and hands up only Socket.IO packets (`42…`, `43…`).

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use clap::ValueEnum;
use memchr::memmem::Finder;
use serde_json::Value;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Starts the bench clock (call once, early).
pub fn start_clock() {
    EPOCH.get_or_init(Instant::now);
}

/// Nanoseconds since the bench started: senders write it into the text and
/// receivers subtract it from their own reading of the same clock.
pub fn nanos(t: Instant) -> u64 {
    let e = *EPOCH.get_or_init(Instant::now);
    t.saturating_duration_since(e).as_nanos() as u64
}

/// What the bench speaks to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// roomchat's JSON frames at /ws: acks on request, `seq` on every message.
    Native,
    /// roomchat's events over Socket.IO v4 (`/socket.io/`): acks as `43<id>`, `seq`.
    Socketio,
    /// The seed's events over Socket.IO v4, as seed-socketio and
    /// socketioxide-chat speak them: no acks, no `seq`; a join is confirmed by
    /// the `message` "Welcome to ROOM, USER!".
    Peer,
}

impl Protocol {
    /// Engine.IO + Socket.IO framing inside the WebSocket.
    pub fn engine_io(self) -> bool {
        self != Protocol::Native
    }

    /// The server answers a request that carries an ack id.
    pub fn has_acks(self) -> bool {
        self != Protocol::Peer
    }

    /// Every `chatMessage` carries the room's `seq`.
    pub fn has_seq(self) -> bool {
        self != Protocol::Peer
    }

    /// The request path used when a URL does not name one.
    pub fn default_path(self) -> &'static str {
        match self {
            Protocol::Native => "/ws",
            _ => "/socket.io/?EIO=4&transport=websocket",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Socketio => "socketio",
            Protocol::Peer => "peer",
        }
    }
}

/// What drives a sender's window and tells it a message went through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Flow {
    /// Messages carry an ack id; the server's acks drive the window
    /// (roomchat only).
    Ack,
    /// Messages carry no ack id; the sender's own copy of the broadcast (every
    /// server here sends a room's messages to the sender too) drives the
    /// window. The same frames for every server.
    Echo,
}

impl Flow {
    pub fn name(self) -> &'static str {
        match self {
            Flow::Ack => "ack",
            Flow::Echo => "echo",
        }
    }
}

/// Who sent a chat message and when, read back from its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub sender: usize,
    pub n: u64,
    pub ts: u64,
}

#[derive(Debug, PartialEq)]
pub enum Msg {
    /// A `chatMessage`; `seq` when the dialect has it.
    Chat {
        seq: Option<u64>,
        tag: Option<Tag>,
    },
    Ack {
        ack: u64,
        seq: Option<u64>,
    },
    Error {
        code: String,
        ack: Option<u64>,
    },
    /// The join took: roomchat's `joined`, or the peers' welcome `message`.
    Joined,
    Connected,
    Other,
    Bad,
}

/// Writes and reads one dialect's frames.
pub struct Codec {
    pub protocol: Protocol,
    /// Chat texts are padded to at least this many bytes (`--text-bytes`).
    pub text_bytes: usize,
    event: Finder<'static>,
    seq: Finder<'static>,
    text: Finder<'static>,
}

impl Codec {
    pub fn new(protocol: Protocol) -> Codec {
        Codec {
            protocol,
            text_bytes: 0,
            event: Finder::new(br#""event":""#),
            seq: Finder::new(br#""seq":"#),
            text: Finder::new(br#""text":""#),
        }
    }

    /// Chat texts padded to at least `n` bytes.
    pub fn text_bytes(self, n: usize) -> Codec {
        Codec {
            text_bytes: n,
            ..self
        }
    }

    /// `joinRoom` without an ack: every dialect confirms a join with an event.
    pub fn join(&self, buf: &mut Vec<u8>, username: &str, room: &str) {
        buf.clear();
        let _ = match self.protocol {
            Protocol::Native => write!(
                buf,
                r#"{{"event":"joinRoom","data":{{"username":"{username}","room":"{room}"}}}}"#
            ),
            _ => write!(
                buf,
                r#"42["joinRoom",{{"username":"{username}","room":"{room}"}}]"#
            ),
        };
    }

    /// A chat message whose text is `<sender>:<n>:<nanos>`, then `:` and `x`s
    /// up to `text_bytes` when that is longer (texts of a realistic size for
    /// the mid-size case; nothing a server must escape), acked as `n` when
    /// `ack` (ignored by the peer dialect, which has no acks). Without an ack
    /// the Socket.IO dialects send the bare string, as the seed's client does.
    pub fn chat(&self, buf: &mut Vec<u8>, sender: usize, n: u64, ts: u64, ack: bool) {
        let mut text = format!("{sender}:{n}:{ts}");
        if text.len() + 1 < self.text_bytes {
            text.push(':');
            text.extend(std::iter::repeat_n('x', self.text_bytes - text.len()));
        }
        buf.clear();
        let _ = match (self.protocol, ack) {
            (Protocol::Native, true) => write!(
                buf,
                r#"{{"event":"chatMessage","data":{{"text":"{text}"}},"ack":{n}}}"#
            ),
            (Protocol::Native, false) => write!(
                buf,
                r#"{{"event":"chatMessage","data":{{"text":"{text}"}}}}"#
            ),
            (Protocol::Socketio, true) => {
                write!(buf, r#"42{n}["chatMessage",{{"text":"{text}"}}]"#)
            }
            _ => write!(buf, r#"42["chatMessage","{text}"]"#),
        };
    }

    pub fn parse(&self, p: &[u8]) -> Msg {
        match self.protocol {
            Protocol::Native => self.fast_native(p).unwrap_or_else(|| slow_native(p)),
            _ => self
                .fast_sio(p)
                .unwrap_or_else(|| slow_sio(p, self.protocol)),
        }
    }

    fn fast_native(&self, p: &[u8]) -> Option<Msg> {
        let at = self.event.find(p)? + 9;
        if !p[at..].starts_with(b"chatMessage\"") {
            return None;
        }
        let s = self.seq.find(p)? + 6;
        let (seq, _) = digits(&p[s..])?;
        Some(Msg::Chat {
            seq: Some(seq),
            tag: self.tag_in(p),
        })
    }

    fn fast_sio(&self, p: &[u8]) -> Option<Msg> {
        let data = p.strip_prefix(br#"42["chatMessage",{"#)?;
        let seq = match self.seq.find(data) {
            Some(s) => Some(digits(&data[s + 6..])?.0),
            None => None,
        };
        Some(Msg::Chat {
            seq,
            tag: self.tag_in(data),
        })
    }

    fn tag_in(&self, p: &[u8]) -> Option<Tag> {
        let t = self.text.find(p)? + 8;
        let end = memchr::memchr(b'"', &p[t..])?;
        tag(&p[t..t + end])
    }
}

fn digits(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut i = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        v = v.checked_mul(10)?.checked_add(u64::from(b[i] - b'0'))?;
        i += 1;
    }
    (i > 0).then_some((v, i))
}

fn tag(text: &[u8]) -> Option<Tag> {
    let (sender, a) = digits(text)?;
    let rest = text.get(a..)?.strip_prefix(b":")?;
    let (n, b) = digits(rest)?;
    let rest = rest.get(b..)?.strip_prefix(b":")?;
    let (ts, c) = digits(rest)?;
    // Nothing after the time, or the padding of `--text-bytes`.
    (c == rest.len() || rest[c] == b':').then_some(Tag {
        sender: sender as usize,
        n,
        ts,
    })
}

fn chat_of(data: Option<&Value>) -> Msg {
    let field = |k: &str| data.and_then(|d| d.get(k));
    Msg::Chat {
        seq: field("seq").and_then(Value::as_u64),
        tag: field("text")
            .and_then(Value::as_str)
            .and_then(|t| tag(t.as_bytes())),
    }
}

fn error_of(data: Option<&Value>, ack: Option<u64>) -> Msg {
    Msg::Error {
        code: data
            .and_then(|d| d.get("code"))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string(),
        ack,
    }
}

fn slow_native(p: &[u8]) -> Msg {
    let Ok(v) = serde_json::from_slice::<Value>(p) else {
        return Msg::Bad;
    };
    let ack = v.get("ack").and_then(Value::as_u64);
    let data = v.get("data");
    match v.get("event").and_then(Value::as_str) {
        Some("chatMessage") => match chat_of(data) {
            Msg::Chat { seq: None, .. } => Msg::Bad,
            m => m,
        },
        Some("ack") => match ack {
            Some(ack) => Msg::Ack {
                ack,
                seq: data.and_then(|d| d.get("seq")).and_then(Value::as_u64),
            },
            None => Msg::Bad,
        },
        Some("error") => error_of(data, ack),
        Some("joined") => Msg::Joined,
        Some("connected") => Msg::Connected,
        Some(_) => Msg::Other,
        None => Msg::Bad,
    }
}

/// A Socket.IO packet (the Engine.IO `4` still in front): `42[name,data]`
/// or `43<id>[data]`.
fn slow_sio(p: &[u8], protocol: Protocol) -> Msg {
    let (kind, rest) = match p {
        [b'4', k, rest @ ..] => (*k, rest),
        _ => return Msg::Bad,
    };
    let (id, json) = match digits(rest) {
        Some((id, len)) => (Some(id), &rest[len..]),
        None => (None, rest),
    };
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(json) else {
        return Msg::Bad;
    };
    match (kind, id) {
        (b'3', Some(ack)) => {
            let data = items.first();
            if data.and_then(|d| d.get("ok")) == Some(&Value::Bool(true)) {
                Msg::Ack {
                    ack,
                    seq: data.and_then(|d| d.get("seq")).and_then(Value::as_u64),
                }
            } else {
                error_of(data, Some(ack))
            }
        }
        (b'2', _) => {
            let data = items.get(1);
            match items.first().and_then(Value::as_str) {
                Some("chatMessage") => chat_of(data),
                Some("error") => error_of(data, None),
                Some("joined") if protocol == Protocol::Socketio => Msg::Joined,
                Some("message")
                    if protocol == Protocol::Peer
                        && data
                            .and_then(Value::as_str)
                            .is_some_and(|s| s.starts_with("Welcome to ")) =>
                {
                    Msg::Joined
                }
                Some("connected") => Msg::Connected,
                Some(_) => Msg::Other,
                None => Msg::Bad,
            }
        }
        _ => Msg::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sender: usize, n: u64, ts: u64) -> Option<Tag> {
        Some(Tag { sender, n, ts })
    }

    #[test]
    fn reads_a_native_chat_message_fast_and_slow() {
        let c = Codec::new(Protocol::Native);
        let f = br#"{"event":"chatMessage","data":{"room":"r","seq":42,"id":"7","username":"u","text":"3:17:123456","ts":1}}"#;
        let want = Msg::Chat {
            seq: Some(42),
            tag: t(3, 17, 123456),
        };
        assert_eq!(c.fast_native(f), Some(want));
        let spaced = br#"{"event": "chatMessage", "data": {"seq": 42, "text": "3:17:123456"}}"#;
        assert_eq!(c.parse(spaced), slow_native(f));
    }

    #[test]
    fn reads_native_acks_errors_joins_and_foreign_texts() {
        let c = Codec::new(Protocol::Native);
        assert_eq!(
            c.parse(br#"{"event":"ack","ack":5,"data":{"ok":true,"seq":9}}"#),
            Msg::Ack {
                ack: 5,
                seq: Some(9)
            }
        );
        assert_eq!(
            c.parse(br#"{"event":"error","data":{"code":"rate_limited","message":"x"},"ack":1}"#),
            Msg::Error {
                code: "rate_limited".into(),
                ack: Some(1)
            }
        );
        assert_eq!(
            c.parse(br#"{"event":"chatMessage","data":{"seq":1,"text":"hello"}}"#),
            Msg::Chat {
                seq: Some(1),
                tag: None
            }
        );
        assert_eq!(
            c.parse(
                br#"{"event":"joined","data":{"room":"r","history":[{"seq":1,"text":"1:2:3"}]}}"#
            ),
            Msg::Joined
        );
    }

    #[test]
    fn reads_roomchat_over_socketio() {
        let c = Codec::new(Protocol::Socketio);
        let f = br#"42["chatMessage",{"room":"r","seq":7,"id":"3","username":"m1","text":"2:5:99","ts":1}]"#;
        assert_eq!(
            c.parse(f),
            Msg::Chat {
                seq: Some(7),
                tag: t(2, 5, 99)
            }
        );
        assert_eq!(
            c.parse(br#"43012[{"ok":true,"seq":4}]"#),
            Msg::Ack {
                ack: 12,
                seq: Some(4)
            }
        );
        assert_eq!(
            c.parse(br#"437[{"code":"invalid_field","message":"x"}]"#),
            Msg::Error {
                code: "invalid_field".into(),
                ack: Some(7)
            }
        );
        assert_eq!(
            c.parse(br#"42["error",{"code":"bad_request"}]"#),
            Msg::Error {
                code: "bad_request".into(),
                ack: None
            }
        );
        assert_eq!(
            c.parse(br#"42["joined",{"room":"r","users":[]}]"#),
            Msg::Joined
        );
        assert_eq!(c.parse(br#"42["connected",{"id":"1"}]"#), Msg::Connected);
    }

    #[test]
    fn reads_the_peers_events() {
        let c = Codec::new(Protocol::Peer);
        let f = br#"42["chatMessage",{"username":"m1","text":"0:3:12345","time":"5:52 pm"}]"#;
        assert_eq!(
            c.parse(f),
            Msg::Chat {
                seq: None,
                tag: t(0, 3, 12345)
            }
        );
        assert_eq!(
            c.parse(br#"42["message","Welcome to room-1, m1!"]"#),
            Msg::Joined
        );
        assert_eq!(c.parse(br#"42["message","m2 has joined"]"#), Msg::Other);
        // roomchat's joined means nothing to a peer client, and vice versa.
        assert_eq!(c.parse(br#"42["joined",{}]"#), Msg::Other);
        let r = Codec::new(Protocol::Socketio);
        assert_eq!(
            r.parse(br#"42["message","Welcome to room-1, m1!"]"#),
            Msg::Other
        );
    }

    #[test]
    fn writes_frames_each_server_can_read() {
        let mut b = Vec::new();
        let n = Codec::new(Protocol::Native);
        n.chat(&mut b, 2, 3, 4, true);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["data"]["text"], "2:3:4");
        assert_eq!(v["ack"], 3);
        n.chat(&mut b, 2, 3, 4, false);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert!(v.get("ack").is_none());
        n.join(&mut b, "u1", "room-1");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["data"]["room"], "room-1");

        let s = Codec::new(Protocol::Socketio);
        s.chat(&mut b, 2, 3, 4, true);
        assert_eq!(b, br#"423["chatMessage",{"text":"2:3:4"}]"#);
        s.chat(&mut b, 2, 3, 4, false);
        assert_eq!(b, br#"42["chatMessage","2:3:4"]"#);
        let p = Codec::new(Protocol::Peer);
        p.chat(&mut b, 2, 3, 4, true);
        assert_eq!(b, br#"42["chatMessage","2:3:4"]"#);
        p.join(&mut b, "u1", "room-1");
        assert_eq!(b, br#"42["joinRoom",{"username":"u1","room":"room-1"}]"#);
    }

    #[test]
    fn pads_texts_to_text_bytes_and_still_reads_the_tag() {
        let mut b = Vec::new();
        for protocol in [Protocol::Native, Protocol::Socketio, Protocol::Peer] {
            let c = Codec::new(protocol).text_bytes(300);
            c.chat(&mut b, 2, 3, 4, false);
            let text = String::from_utf8(b.clone()).unwrap();
            let start = text.find("2:3:4").unwrap();
            let padded = &text[start..start + text[start..].find('"').unwrap()];
            assert_eq!(padded.len(), 300, "{protocol:?}");
            assert_eq!(tag(padded.as_bytes()), t(2, 3, 4));
        }
        let c = Codec::new(Protocol::Native);
        let f = format!(
            r#"{{"event":"chatMessage","data":{{"seq":1,"text":"5:6:7:{}"}}}}"#,
            "x".repeat(290)
        );
        assert_eq!(
            c.parse(f.as_bytes()),
            Msg::Chat {
                seq: Some(1),
                tag: t(5, 6, 7)
            }
        );
        // A text that only looks like a tag is not one.
        assert_eq!(tag(b"5:6:7x"), None);
    }
}
