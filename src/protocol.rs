//! The chat protocol as data: decoding and validating client frames, and the
//! server events with their JSON shapes. Pure functions, no I/O; see
//! `docs/PROTOCOL.md` for the prose version.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
pub use serde_json::value::RawValue;

/// Longest username, in Unicode scalar values, after trimming.
pub const MAX_USERNAME_CHARS: usize = 32;
/// Longest room name, in Unicode scalar values, after trimming.
pub const MAX_ROOM_CHARS: usize = 64;
/// Longest chat message text, in Unicode scalar values.
pub const MAX_TEXT_CHARS: usize = 2000;
/// Largest `ack` a client may choose: 2^53 - 1, the last integer a
/// JavaScript number holds exactly.
pub const MAX_ACK: u64 = (1 << 53) - 1;
/// Longest room epoch, in characters: the server's epochs are shorter, and
/// a longer one a client sends back cannot be one of them.
pub const MAX_EPOCH_CHARS: usize = 32;

/// A client frame whose envelope is sound: `event` is a string and `ack`,
/// if present, is valid. `data` is still JSON text, checked later by
/// [`ClientEvent::parse`]. Both borrow from the frame where they can (a
/// string with escapes, or data a transport had to rewrite, is owned).
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    pub event: Cow<'a, str>,
    pub data: Option<Cow<'a, RawValue>>,
    pub ack: Option<u64>,
}

/// The events a client may send: the one list of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventName {
    JoinRoom,
    ChatMessage,
    Typing,
    LeaveRoom,
    /// v3: prove who the client is, or refresh that proof.
    Authenticate,
}

impl EventName {
    pub const ALL: [EventName; 5] = [
        EventName::JoinRoom,
        EventName::ChatMessage,
        EventName::Typing,
        EventName::LeaveRoom,
        EventName::Authenticate,
    ];

    /// The event a client names, if it is one it may send.
    pub fn parse(name: &str) -> Option<EventName> {
        EventName::ALL.into_iter().find(|e| e.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventName::JoinRoom => "joinRoom",
            EventName::ChatMessage => "chatMessage",
            EventName::Typing => "typing",
            EventName::LeaveRoom => "leaveRoom",
            EventName::Authenticate => "authenticate",
        }
    }

    /// Whether the event only makes sense inside a room (`not_in_room` otherwise).
    pub fn needs_room(self) -> bool {
        !matches!(self, EventName::JoinRoom | EventName::Authenticate)
    }
}

/// What a client asked for, validated. Its strings borrow from the frame
/// where they can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent<'a> {
    JoinRoom {
        /// Optional for a verified client (its name is the token's).
        username: Option<Cow<'a, str>>,
        room: Cow<'a, str>,
        /// `since` and `epoch`: where the client left the room, if it is
        /// coming back to it.
        resume: Option<Resume<'a>>,
    },
    ChatMessage {
        text: Cow<'a, str>,
    },
    Typing {
        typing: bool,
    },
    LeaveRoom,
    Authenticate {
        token: Cow<'a, str>,
    },
}

impl<'a> ClientEvent<'a> {
    /// Checks an event's data, for a client that has not proven who it is.
    /// Call after the `unknown_event` and `not_in_room` checks, which
    /// depend on the connection's state.
    pub fn parse(name: EventName, data: Option<&'a RawValue>) -> Result<Self, Rejection> {
        ClientEvent::parse_for(name, data, false)
    }

    /// Checks an event's data; `verified`: the client proved who it is, so
    /// `joinRoom`'s `username` may be left out.
    pub fn parse_for(
        name: EventName,
        data: Option<&'a RawValue>,
        verified: bool,
    ) -> Result<Self, Rejection> {
        match name {
            EventName::JoinRoom => {
                let [username, room, since, epoch] =
                    fields(data, ["username", "room", "since", "epoch"])?;
                let username = match username {
                    None if verified => None,
                    raw => Some(name_field(raw, "username", MAX_USERNAME_CHARS)?),
                };
                let room = name_field(room, "room", MAX_ROOM_CHARS)?;
                let resume = Resume::parse(since, epoch)?;
                Ok(ClientEvent::JoinRoom {
                    username,
                    room,
                    resume,
                })
            }
            EventName::ChatMessage => {
                let [text] = fields(data, ["text"])?;
                let text = text
                    .and_then(string)
                    .ok_or_else(|| Rejection::invalid("text", "text must be a string"))?;
                check_text(&text)?;
                Ok(ClientEvent::ChatMessage { text })
            }
            EventName::Typing => {
                let [typing] = fields(data, ["typing"])?;
                match typing.map(|raw| raw.get()) {
                    Some("true") => Ok(ClientEvent::Typing { typing: true }),
                    Some("false") => Ok(ClientEvent::Typing { typing: false }),
                    _ => Err(Rejection::invalid("typing", "typing must be true or false")),
                }
            }
            EventName::LeaveRoom => Ok(ClientEvent::LeaveRoom),
            EventName::Authenticate => {
                let [token] = fields(data, ["token"])?;
                let token = token
                    .and_then(string)
                    .ok_or_else(|| Rejection::invalid("token", "token must be a string"))?;
                Ok(ClientEvent::Authenticate { token })
            }
        }
    }

    /// The same request, owning its strings.
    pub fn into_owned(self) -> ClientEvent<'static> {
        let own = |s: Cow<'_, str>| Cow::Owned(s.into_owned());
        match self {
            ClientEvent::JoinRoom {
                username,
                room,
                resume,
            } => ClientEvent::JoinRoom {
                username: username.map(own),
                room: own(room),
                resume: resume.map(|r| Resume {
                    since: r.since,
                    epoch: own(r.epoch),
                }),
            },
            ClientEvent::ChatMessage { text } => ClientEvent::ChatMessage { text: own(text) },
            ClientEvent::Typing { typing } => ClientEvent::Typing { typing },
            ClientEvent::LeaveRoom => ClientEvent::LeaveRoom,
            ClientEvent::Authenticate { token } => ClientEvent::Authenticate { token: own(token) },
        }
    }

    /// Checks `data` given as a JSON value (for tests: the protocol reads
    /// raw JSON text).
    pub fn parse_value(
        name: EventName,
        data: Option<&serde_json::Value>,
    ) -> Result<ClientEvent<'static>, Rejection> {
        let raw =
            data.map(|d| serde_json::value::to_raw_value(d).expect("a JSON value serializes"));
        ClientEvent::parse(name, raw.as_deref()).map(ClientEvent::into_owned)
    }
}

/// A `joinRoom`'s `since` and `epoch`: the last `seq` the client saw in
/// the room, and the room's epoch then. They come together or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume<'a> {
    pub since: u64,
    pub epoch: Cow<'a, str>,
}

impl<'a> Resume<'a> {
    /// `since` a whole number from 0 to 2^53-1 (as an `ack`), `epoch` a
    /// string of at most [`MAX_EPOCH_CHARS`]; each checked for its type
    /// first, then that the other is there.
    fn parse(
        since: Option<&'a RawValue>,
        epoch: Option<&'a RawValue>,
    ) -> Result<Option<Resume<'a>>, Rejection> {
        let since = since
            .map(|raw| {
                parse_ack(raw).ok_or_else(|| {
                    Rejection::invalid("since", "since must be a whole number from 0 to 2^53-1")
                })
            })
            .transpose()?;
        let epoch = epoch
            .map(|raw| match string(raw) {
                Some(e) if e.chars().count() <= MAX_EPOCH_CHARS => Ok(e),
                _ => Err(Rejection::invalid(
                    "epoch",
                    format!("epoch must be a string of at most {MAX_EPOCH_CHARS} characters"),
                )),
            })
            .transpose()?;
        match (since, epoch) {
            (None, None) => Ok(None),
            (Some(since), Some(epoch)) => Ok(Some(Resume { since, epoch })),
            (Some(_), None) => Err(Rejection::invalid(
                "epoch",
                "since needs the epoch it was seen in",
            )),
            (None, Some(_)) => Err(Rejection::invalid("since", "epoch needs a since")),
        }
    }
}

/// The protocol's error codes, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadJson,
    BadRequest,
    RateLimited,
    UnknownEvent,
    NotInRoom,
    InvalidField,
    /// Cluster only: Redis is unreachable, the request was not carried out.
    Unavailable,
    /// v3: the client has not proven who it is (checked after
    /// `unknown_event`, before `not_in_room`).
    Unauthenticated,
    /// v3: a token that does not verify (signature, claims, iss/aud, nbf).
    InvalidToken,
    /// v3: the token's `exp` has passed.
    TokenExpired,
    /// v3: a room the token may not join, another name, another `sub`.
    Forbidden,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::RateLimited,
        ErrorCode::UnknownEvent,
        ErrorCode::NotInRoom,
        ErrorCode::InvalidField,
        ErrorCode::Unavailable,
        ErrorCode::Unauthenticated,
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

/// A rejected frame: the `error` event's data, plus the `ack` to answer with
/// when the request had a readable one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<&'static str>,
    pub ack: Option<u64>,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
            field: None,
            ack: None,
        }
    }

    /// `forbidden`, naming the field whose value the token does not allow.
    pub fn forbidden(field: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            field: Some(field),
            ..Rejection::new(ErrorCode::Forbidden, message)
        }
    }

    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            field: Some(field),
            ..Rejection::new(ErrorCode::InvalidField, message)
        }
    }

    pub fn with_ack(mut self, ack: Option<u64>) -> Self {
        self.ack = ack;
        self
    }
}

/// Reads the envelope of a native text frame: `{"event": str, "data"?: any,
/// "ack"?: n}`, without building a tree of it: the three fields are taken
/// as raw JSON text borrowed from the frame, every other field is skipped.
pub fn parse_envelope(text: &str) -> Result<Envelope<'_>, Rejection> {
    let [event, data, ack] = pick(text, &["event", "data", "ack"]).map_err(|e| {
        let message = if e.is_data() {
            "frame must be a JSON object".to_owned()
        } else {
            format!("frame is not valid JSON: {e}")
        };
        Rejection::new(ErrorCode::BadJson, message)
    })?;
    let ack = match ack {
        None => None,
        Some(raw) => Some(parse_ack(raw).ok_or_else(|| {
            Rejection::new(
                ErrorCode::BadRequest,
                "ack must be a whole number from 0 to 2^53-1",
            )
        })?),
    };
    let Some(event) = event.and_then(string) else {
        return Err(
            Rejection::new(ErrorCode::BadRequest, "frame needs a string \"event\"").with_ack(ack),
        );
    };
    Ok(Envelope {
        event,
        data: data.map(Cow::Borrowed),
        ack,
    })
}

/// An `ack` is a whole number in 0..=2^53-1 (`7` or `7.0`, not `-1`, `1.5` or `"7"`).
pub fn parse_ack(raw: &RawValue) -> Option<u64> {
    let n: serde_json::Number = serde_json::from_str(raw.get()).ok()?;
    match (n.as_u64(), n.as_f64()) {
        (Some(n), _) => Some(n),
        (None, Some(f)) if f.fract() == 0.0 && (0.0..=MAX_ACK as f64).contains(&f) => {
            Some(f as u64)
        }
        _ => None,
    }
    .filter(|&n| n <= MAX_ACK)
}

/// The string a raw JSON value holds, if it is one; borrowed from the frame
/// unless it has escapes.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    if !raw.get().starts_with('"') {
        return None;
    }
    serde_json::from_str::<MaybeBorrowed<'_>>(raw.get())
        .ok()
        .map(|s| s.0)
}

/// The values of the fields `names` of an object given as raw JSON (None
/// where absent): `invalid_field` `data` if it is not an object.
fn fields<'a, const N: usize>(
    data: Option<&'a RawValue>,
    names: [&'static str; N],
) -> Result<[Option<&'a RawValue>; N], Rejection> {
    let not_object = || Rejection::invalid("data", "data must be an object");
    let data = data
        .filter(|d| d.get().starts_with('{'))
        .ok_or_else(not_object)?;
    pick(data.get(), &names).map_err(|_| not_object())
}

/// Reads a JSON object and keeps the raw values of the fields `names`
/// (the last one, if a field comes twice), skipping every other field.
fn pick<'a, const N: usize>(
    json: &'a str,
    names: &[&'static str; N],
) -> Result<[Option<&'a RawValue>; N], serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(json);
    let picked = Pick(names).deserialize(&mut de)?;
    de.end()?;
    Ok(picked)
}

/// The seed `pick` reads an object with.
struct Pick<'n, const N: usize>(&'n [&'static str; N]);

impl<'de, const N: usize> DeserializeSeed<'de> for Pick<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for Pick<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut picked = [None; N];
        while let Some(MaybeBorrowed(key)) = map.next_key()? {
            match self.0.iter().position(|name| *name == key) {
                Some(i) => picked[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(picked)
    }
}

/// A JSON string, borrowed from the input unless it has escapes.
struct MaybeBorrowed<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for MaybeBorrowed<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> Visitor<'de> for Str {
            type Value = MaybeBorrowed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(s)))
            }
        }
        de.deserialize_str(Str)
    }
}

/// A username or room name: a string, trimmed, 1..=max characters, no control characters.
fn name_field<'a>(
    raw: Option<&'a RawValue>,
    field: &'static str,
    max: usize,
) -> Result<Cow<'a, str>, Rejection> {
    let Some(value) = raw.and_then(string) else {
        return Err(Rejection::invalid(
            field,
            format!("{field} must be a string"),
        ));
    };
    let name = trim(value);
    let chars = name.chars().count();
    if chars == 0 || chars > max {
        return Err(Rejection::invalid(
            field,
            format!("{field} must be 1 to {max} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Rejection::invalid(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(name)
}

/// `name` as a `username` is used (trimmed), if it is a valid one: 1 to 32
/// characters, no control characters. For a token's `name` claim.
pub fn valid_username(name: &str) -> Option<&str> {
    let name = name.trim();
    let chars = name.chars().count();
    ((1..=MAX_USERNAME_CHARS).contains(&chars) && !name.chars().any(char::is_control))
        .then_some(name)
}

/// `s` without leading and trailing white space, still borrowed if it was.
fn trim(s: Cow<'_, str>) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
        Cow::Owned(o) if o.trim().len() == o.len() => Cow::Owned(o),
        Cow::Owned(o) => Cow::Owned(o.trim().to_owned()),
    }
}

/// A chat text: 1..=2000 characters, not blank, no control characters but `\n`, `\r`, `\t`.
fn check_text(text: &str) -> Result<(), Rejection> {
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_TEXT_CHARS {
        return Err(Rejection::invalid(
            "text",
            format!("text must be 1 to {MAX_TEXT_CHARS} characters"),
        ));
    }
    if text.chars().all(char::is_whitespace) {
        return Err(Rejection::invalid(
            "text",
            "text must not be only white space",
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(Rejection::invalid(
            "text",
            "text must not contain control characters",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Server events. Each is a name and a data object; the transport (native
// frame or Socket.IO packet) wraps them, see `codec::Outgoing`. Both room
// engines build every event through [`ServerEvent`]: a new field is one
// change here, and the compiler then asks each engine for its value.

/// Every event the server sends, with its data: the one list of their
/// names and shapes.
pub(crate) enum ServerEvent<'a> {
    Connected(ConnectedData<'a>),
    Joined(JoinedData<'a>),
    UserJoined(PresenceData<'a>),
    UserLeft(PresenceData<'a>),
    ChatMessage(ChatMessageData<'a>),
    Typing(TypingData<'a>),
    Left(LeftData<'a>),
    Ack(AckData<'a>),
    Error(ErrorData<'a>),
}

impl ServerEvent<'_> {
    /// `joined`'s name, for an event whose data is built later (see
    /// `codec::Outgoing::later`).
    pub(crate) const JOINED: &'static str = "joined";

    pub(crate) fn name(&self) -> &'static str {
        match self {
            ServerEvent::Connected(_) => "connected",
            ServerEvent::Joined(_) => Self::JOINED,
            ServerEvent::UserJoined(_) => "userJoined",
            ServerEvent::UserLeft(_) => "userLeft",
            ServerEvent::ChatMessage(_) => "chatMessage",
            ServerEvent::Typing(_) => "typing",
            ServerEvent::Left(_) => "left",
            ServerEvent::Ack(_) => "ack",
            ServerEvent::Error(_) => "error",
        }
    }

    /// The event's data as JSON text.
    pub(crate) fn data(&self) -> Box<RawValue> {
        fn raw<T: Serialize>(data: &T) -> Box<RawValue> {
            serde_json::value::to_raw_value(data).expect("event data always serializes")
        }
        match self {
            ServerEvent::Connected(d) => raw(d),
            ServerEvent::Joined(d) => raw(d),
            ServerEvent::UserJoined(d) | ServerEvent::UserLeft(d) => raw(d),
            ServerEvent::ChatMessage(d) => raw(d),
            ServerEvent::Typing(d) => raw(d),
            ServerEvent::Left(d) => raw(d),
            ServerEvent::Ack(d) => raw(d),
            ServerEvent::Error(d) => raw(d),
        }
    }
}

/// A client's `id` on the wire: a JSON string, written straight into the
/// event (no `String` made for it).
#[derive(Clone, Copy)]
pub(crate) struct Id<'a>(pub(crate) &'a dyn fmt::Display);

impl Serialize for Id<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

/// `{"id", "username"}`: one entry of `joined.users`.
#[derive(Serialize)]
pub(crate) struct UserInfo<'a> {
    pub(crate) id: Id<'a>,
    pub(crate) username: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<&'a str>,
}

/// `chatMessage` data, also what `joined.history` holds.
#[derive(Serialize)]
pub(crate) struct ChatMessageData<'a> {
    pub(crate) room: &'a str,
    pub(crate) seq: u64,
    pub(crate) id: Id<'a>,
    pub(crate) username: &'a str,
    /// v3: the verified user's `sub`, on a server with a key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<&'a str>,
    pub(crate) text: &'a str,
    pub(crate) ts: u64,
}

/// `userJoined` and `userLeft` data.
#[derive(Serialize)]
pub(crate) struct PresenceData<'a> {
    pub(crate) room: &'a str,
    pub(crate) id: Id<'a>,
    pub(crate) username: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<&'a str>,
}

/// `typing` data.
#[derive(Serialize)]
pub(crate) struct TypingData<'a> {
    pub(crate) room: &'a str,
    pub(crate) id: Id<'a>,
    pub(crate) username: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<&'a str>,
    pub(crate) typing: bool,
}

/// `joined` data. History entries are kept pre-encoded, see `rooms::Room`.
#[derive(Serialize)]
pub(crate) struct JoinedData<'a> {
    pub(crate) room: &'a str,
    pub(crate) username: &'a str,
    pub(crate) id: Id<'a>,
    pub(crate) users: Vec<UserInfo<'a>>,
    /// After a `since`: only the messages after it (if `resumed`).
    pub(crate) history: Vec<&'a serde_json::value::RawValue>,
    /// The room's incarnation: a room dropped and created again has another.
    pub(crate) epoch: &'a str,
    /// Only for a join with `since`: whether `history` is every message
    /// after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) resumed: Option<bool>,
}

/// Which of a room's `history_len` last messages, the last of which has
/// `last_seq`, a join with `resume` gets: (how many of the newest, and
/// whether that is a resume). The in-memory engine's rule; the cluster's
/// `join.lua` keeps the same one inside Redis. Without a resume, or when it cannot be one (another epoch, a `since`
/// beyond the last `seq`, or messages after `since` no longer kept): the
/// whole history.
pub(crate) fn resumed_history(
    resume: Option<(u64, &str)>,
    epoch: &str,
    last_seq: u64,
    history_len: usize,
) -> (usize, Option<bool>) {
    let Some((since, their_epoch)) = resume else {
        return (history_len, None);
    };
    let kept = history_len as u64;
    if their_epoch == epoch && since <= last_seq && last_seq - since <= kept {
        ((last_seq - since) as usize, Some(true))
    } else {
        (history_len, Some(false))
    }
}

/// `ack` data: `{"ok": true}`, with the `seq` of a chat message or the
/// `room` of a join.
#[derive(Serialize, Default)]
pub(crate) struct AckData<'a> {
    pub(crate) ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) room: Option<&'a str>,
    /// v3, `authenticate`'s: who the token proved, and until when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exp: Option<u64>,
}

impl AckData<'_> {
    pub(crate) fn ok() -> Self {
        AckData {
            ok: true,
            ..AckData::default()
        }
    }
}

/// `left` data.
#[derive(Serialize)]
pub(crate) struct LeftData<'a> {
    pub(crate) room: &'a str,
}

/// `connected` data.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectedData<'a> {
    pub(crate) id: Id<'a>,
    pub(crate) limits: Limits,
    /// v3: `"required"` when the server has a key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth: Option<&'static str>,
    /// v3: who the client is, when its handshake already proved it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Limits {
    pub(crate) max_message_bytes: usize,
    pub(crate) max_text_chars: usize,
    pub(crate) rate_limit: Option<u32>,
}

/// `error` data.
#[derive(Debug, Serialize)]
pub struct ErrorData<'a> {
    pub code: &'static str,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

impl Rejection {
    pub fn data(&self) -> ErrorData<'_> {
        ErrorData {
            code: self.code.as_str(),
            message: &self.message,
            field: self.field,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn reject(text: &str) -> Rejection {
        parse_envelope(text).unwrap_err()
    }

    fn parse_event(name: &str, data: Option<&Value>) -> Result<ClientEvent<'static>, Rejection> {
        ClientEvent::parse_value(EventName::parse(name).expect("a known event"), data)
    }

    fn ack(value: Value) -> Option<u64> {
        parse_ack(&serde_json::value::to_raw_value(&value).unwrap())
    }

    #[test]
    fn envelope_reads_event_data_and_ack() {
        let env = parse_envelope(r#"{"event":"typing","data":{"typing":true},"ack":7}"#).unwrap();
        assert_eq!(env.event, "typing");
        assert_eq!(
            env.data.as_deref().map(RawValue::get),
            Some(r#"{"typing":true}"#)
        );
        assert!(
            matches!(env.event, Cow::Borrowed(_)),
            "no copy of a plain string"
        );
        assert_eq!(env.ack, Some(7));
    }

    #[test]
    fn not_json_or_not_an_object_is_bad_json() {
        for text in ["", "{", "nope", "[1,2]", "\"event\"", "42", "null"] {
            assert_eq!(reject(text).code, ErrorCode::BadJson, "{text:?}");
        }
    }

    #[test]
    fn missing_or_non_string_event_is_bad_request_keeping_a_valid_ack() {
        let r = reject(r#"{"data":{}, "ack": 3}"#);
        assert_eq!((r.code, r.ack), (ErrorCode::BadRequest, Some(3)));
        let r = reject(r#"{"event": 5}"#);
        assert_eq!((r.code, r.ack), (ErrorCode::BadRequest, None));
    }

    #[test]
    fn ack_bounds() {
        assert_eq!(ack(json!(0)), Some(0));
        assert_eq!(ack(json!(MAX_ACK)), Some(MAX_ACK));
        assert_eq!(ack(json!(7.0)), Some(7));
        for bad in [
            json!(MAX_ACK + 1),
            json!(-1),
            json!(1.5),
            json!("7"),
            json!(null),
            json!(1e300),
        ] {
            assert_eq!(ack(bad.clone()), None, "{bad}");
        }
        let r = reject(r#"{"event":"typing","ack":-1}"#);
        assert_eq!((r.code, r.ack), (ErrorCode::BadRequest, None));
    }

    fn join(username: &str, room: &str) -> Result<ClientEvent<'static>, Rejection> {
        parse_event(
            "joinRoom",
            Some(&json!({"username": username, "room": room})),
        )
    }

    #[test]
    fn username_and_room_are_trimmed_and_bounded() {
        assert_eq!(
            join("  ann\t", " lobby ").unwrap(),
            ClientEvent::JoinRoom {
                username: Some("ann".into()),
                room: "lobby".into(),
                resume: None,
            }
        );
        assert!(join(&"é".repeat(32), "r").is_ok());
        assert_eq!(
            join(&"é".repeat(33), "r").unwrap_err().field,
            Some("username")
        );
        assert!(join("a", &"😀".repeat(64)).is_ok());
        assert_eq!(join("a", &"😀".repeat(65)).unwrap_err().field, Some("room"));
        assert_eq!(join("   ", "r").unwrap_err().field, Some("username"));
        assert_eq!(join("a\u{7}b", "r").unwrap_err().field, Some("username"));
        assert_eq!(
            join("a", "r\u{85}").unwrap(),
            join("a", "r").unwrap(),
            "U+0085 is white space"
        );
        assert_eq!(join("a", "x\u{9f}y").unwrap_err().field, Some("room"));
    }

    #[test]
    fn since_and_epoch_come_together_with_their_types() {
        let resume = |extra: Value| {
            let mut data = json!({"username": "a", "room": "r"});
            data.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            match parse_event("joinRoom", Some(&data)) {
                Ok(ClientEvent::JoinRoom { resume, .. }) => Ok(resume),
                Ok(other) => panic!("{other:?}"),
                Err(r) => Err(r.field),
            }
        };
        assert_eq!(resume(json!({})), Ok(None));
        let ok = |since, epoch: &str| {
            Ok(Some(Resume {
                since,
                epoch: Cow::Owned(epoch.to_owned()),
            }))
        };
        assert_eq!(resume(json!({"since": 0, "epoch": "e"})), ok(0, "e"));
        assert_eq!(resume(json!({"since": 7.0, "epoch": ""})), ok(7, ""));
        let long = "x".repeat(MAX_EPOCH_CHARS);
        assert_eq!(
            resume(json!({"since": MAX_ACK, "epoch": long})),
            ok(MAX_ACK, &long)
        );
        for (extra, field) in [
            (json!({"since": 3}), "epoch"),
            (json!({"epoch": "e"}), "since"),
            (json!({"since": -1, "epoch": "e"}), "since"),
            (json!({"since": 1.5, "epoch": "e"}), "since"),
            (json!({"since": "3", "epoch": "e"}), "since"),
            (json!({"since": null, "epoch": "e"}), "since"),
            (json!({"since": MAX_ACK + 1, "epoch": "e"}), "since"),
            (json!({"since": "x"}), "since"),
            (json!({"since": 3, "epoch": 5}), "epoch"),
            (json!({"since": 3, "epoch": null}), "epoch"),
            (json!({"since": 3, "epoch": "é".repeat(33)}), "epoch"),
        ] {
            assert_eq!(resume(extra.clone()), Err(Some(field)), "{extra}");
        }
        let bad_name = json!({"username": 1, "room": "r", "since": "x"});
        assert_eq!(
            parse_event("joinRoom", Some(&bad_name)).unwrap_err().field,
            Some("username"),
            "the fields are checked in the order of the table"
        );
    }

    #[test]
    fn a_resume_is_every_message_after_since_or_says_it_is_not() {
        let rule = |since, epoch| resumed_history(Some((since, epoch)), "e", 10, 4);
        assert_eq!(resumed_history(None, "e", 10, 4), (4, None));
        assert_eq!(rule(10, "e"), (0, Some(true)), "missed nothing");
        assert_eq!(rule(8, "e"), (2, Some(true)));
        assert_eq!(rule(6, "e"), (4, Some(true)), "exactly at the edge");
        assert_eq!(rule(5, "e"), (4, Some(false)), "seq 6 is gone");
        assert_eq!(rule(11, "e"), (4, Some(false)), "beyond the last seq");
        assert_eq!(rule(8, "f"), (4, Some(false)), "another epoch");
        assert_eq!(resumed_history(Some((3, "e")), "e", 3, 0), (0, Some(true)));
        assert_eq!(resumed_history(Some((2, "e")), "e", 3, 0), (0, Some(false)));
        assert_eq!(resumed_history(Some((0, "e")), "e", 0, 0), (0, Some(true)));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let field = |event: &str, data: Value| parse_event(event, Some(&data)).unwrap_err().field;
        assert_eq!(
            field("joinRoom", json!({"username": 1, "room": "r"})),
            Some("username")
        );
        assert_eq!(field("joinRoom", json!({"username": "a"})), Some("room"));
        assert_eq!(field("joinRoom", json!("ann")), Some("data"));
        assert_eq!(field("chatMessage", json!({"text": ["hi"]})), Some("text"));
        assert_eq!(field("typing", json!({"typing": "yes"})), Some("typing"));
        assert_eq!(parse_event("typing", None).unwrap_err().field, Some("data"));
        assert_eq!(parse_event("leaveRoom", None), Ok(ClientEvent::LeaveRoom));
    }

    #[test]
    fn text_bounds() {
        let chat = |text: &str| parse_event("chatMessage", Some(&json!({ "text": text })));
        assert!(chat(&"x".repeat(2000)).is_ok());
        assert!(chat(&"x".repeat(2001)).is_err());
        assert!(chat("").is_err());
        assert!(chat(" \n\t\u{3000}").is_err());
        assert!(chat("line\r\nnext\ttab").is_ok());
        assert!(chat("bell\u{7}").is_err());
        assert_eq!(
            chat("  kept  ").unwrap(),
            ClientEvent::ChatMessage {
                text: "  kept  ".into()
            }
        );
    }

    #[test]
    fn authenticate_takes_a_string_token_and_a_verified_join_may_leave_out_its_name() {
        assert_eq!(
            parse_event("authenticate", Some(&json!({"token": "a.b.c"}))).unwrap(),
            ClientEvent::Authenticate {
                token: "a.b.c".into()
            }
        );
        for data in [json!({"token": 5}), json!({}), json!({"token": null})] {
            let r = parse_event("authenticate", Some(&data)).unwrap_err();
            assert_eq!((r.code, r.field), (ErrorCode::InvalidField, Some("token")));
        }
        assert_eq!(
            parse_event("authenticate", None).unwrap_err().field,
            Some("data")
        );
        let room_only = serde_json::value::to_raw_value(&json!({"room": " r "})).unwrap();
        let name = EventName::JoinRoom;
        assert_eq!(
            ClientEvent::parse(name, Some(&room_only))
                .unwrap_err()
                .field,
            Some("username"),
            "required without a verified identity"
        );
        assert_eq!(
            ClientEvent::parse_for(name, Some(&room_only), true).unwrap(),
            ClientEvent::JoinRoom {
                username: None,
                room: "r".into(),
                resume: None,
            }
        );
        let blank =
            serde_json::value::to_raw_value(&json!({"username": " ", "room": "r"})).unwrap();
        assert_eq!(
            ClientEvent::parse_for(name, Some(&blank), true)
                .unwrap_err()
                .field,
            Some("username"),
            "a name given is still checked"
        );
        assert_eq!(valid_username("  Ann "), Some("Ann"));
        assert_eq!(valid_username("a\u{7}"), None);
        assert_eq!(valid_username(&"x".repeat(33)), None);
        assert!(!EventName::Authenticate.needs_room());
    }

    #[test]
    fn event_names_are_one_list() {
        assert_eq!(EventName::parse("dance"), None);
        for name in EventName::ALL {
            assert_eq!(EventName::parse(name.as_str()), Some(name));
        }
        assert!(!EventName::JoinRoom.needs_room() && EventName::Typing.needs_room());
    }
}
