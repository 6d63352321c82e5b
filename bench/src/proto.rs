//! The few roomchat frames the bench sends, and a fast reader for the ones it
//! receives: `chatMessage` is picked apart by byte search (the bench chose every
//! string in it), everything else goes through serde_json.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use memchr::memmem::Finder;
use serde_json::Value;

/// The `ack` of a `joinRoom`; chat messages use their own number, far below.
pub const JOIN_ACK: u64 = 1 << 50;

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

pub fn join(buf: &mut Vec<u8>, username: &str, room: &str) {
    buf.clear();
    let _ = write!(
        buf,
        r#"{{"event":"joinRoom","data":{{"username":"{username}","room":"{room}"}},"ack":{JOIN_ACK}}}"#
    );
}

/// A chat message whose text is `<sender>:<n>:<nanos>`, acked as `n`.
pub fn chat(buf: &mut Vec<u8>, sender: usize, n: u64, ts: u64) {
    buf.clear();
    let _ = write!(
        buf,
        r#"{{"event":"chatMessage","data":{{"text":"{sender}:{n}:{ts}"}},"ack":{n}}}"#
    );
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
    Chat { seq: u64, tag: Option<Tag> },
    Ack { ack: u64, seq: Option<u64> },
    Error { code: String, ack: Option<u64> },
    Joined,
    Connected,
    Other,
    Bad,
}

pub struct Parser {
    event: Finder<'static>,
    seq: Finder<'static>,
    text: Finder<'static>,
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            event: Finder::new(br#""event":""#),
            seq: Finder::new(br#""seq":"#),
            text: Finder::new(br#""text":""#),
        }
    }
}

impl Parser {
    pub fn parse(&self, p: &[u8]) -> Msg {
        self.fast_chat(p).unwrap_or_else(|| slow(p))
    }

    fn fast_chat(&self, p: &[u8]) -> Option<Msg> {
        let at = self.event.find(p)? + 9;
        if !p[at..].starts_with(b"chatMessage\"") {
            return None;
        }
        let s = self.seq.find(p)? + 6;
        let (seq, _) = digits(&p[s..])?;
        let t = self.text.find(p)? + 8;
        let end = memchr::memchr(b'"', &p[t..])?;
        Some(Msg::Chat {
            seq,
            tag: tag(&p[t..t + end]),
        })
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
    (c == rest.len()).then_some(Tag {
        sender: sender as usize,
        n,
        ts,
    })
}

fn slow(p: &[u8]) -> Msg {
    let Ok(v) = serde_json::from_slice::<Value>(p) else {
        return Msg::Bad;
    };
    let ack = v.get("ack").and_then(Value::as_u64);
    let data = v.get("data");
    let field = |k: &str| data.and_then(|d| d.get(k));
    match v.get("event").and_then(Value::as_str) {
        Some("chatMessage") => match field("seq").and_then(Value::as_u64) {
            Some(seq) => Msg::Chat {
                seq,
                tag: field("text")
                    .and_then(Value::as_str)
                    .and_then(|t| tag(t.as_bytes())),
            },
            None => Msg::Bad,
        },
        Some("ack") => match ack {
            Some(ack) => Msg::Ack {
                ack,
                seq: field("seq").and_then(Value::as_u64),
            },
            None => Msg::Bad,
        },
        Some("error") => Msg::Error {
            code: field("code")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            ack,
        },
        Some("joined") => Msg::Joined,
        Some("connected") => Msg::Connected,
        Some(_) => Msg::Other,
        None => Msg::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_chat_message_fast_and_slow() {
        let p = Parser::default();
        let f = br#"{"event":"chatMessage","data":{"room":"r","seq":42,"id":"7","username":"u","text":"3:17:123456","ts":1}}"#;
        let want = Msg::Chat {
            seq: 42,
            tag: Some(Tag {
                sender: 3,
                n: 17,
                ts: 123456,
            }),
        };
        assert_eq!(p.fast_chat(f), Some(want));
        let spaced = br#"{"event": "chatMessage", "data": {"seq": 42, "text": "3:17:123456"}}"#;
        assert_eq!(p.parse(spaced), slow(f));
    }

    #[test]
    fn reads_acks_errors_and_foreign_texts() {
        let p = Parser::default();
        assert_eq!(
            p.parse(br#"{"event":"ack","ack":5,"data":{"ok":true,"seq":9}}"#),
            Msg::Ack {
                ack: 5,
                seq: Some(9)
            }
        );
        assert_eq!(
            p.parse(br#"{"event":"error","data":{"code":"rate_limited","message":"x"},"ack":1}"#),
            Msg::Error {
                code: "rate_limited".into(),
                ack: Some(1)
            }
        );
        assert_eq!(
            p.parse(br#"{"event":"chatMessage","data":{"seq":1,"text":"hello"}}"#),
            Msg::Chat { seq: 1, tag: None }
        );
    }

    #[test]
    fn writes_frames_the_server_can_read() {
        let mut b = Vec::new();
        chat(&mut b, 2, 3, 4);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["data"]["text"], "2:3:4");
        assert_eq!(v["ack"], 3);
        join(&mut b, "u1", "room-1");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["data"]["room"], "room-1");
        assert_eq!(v["ack"], JOIN_ACK);
    }
}
