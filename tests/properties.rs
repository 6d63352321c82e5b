//! Property tests: the validation bounds of `roomchat::protocol` against a
//! model built from how each input was generated (not from the code under
//! test), and (`protocol/properties.rs`) the in-memory room registry driven
//! through a real server by arbitrary sequences of joins, chats, typing,
//! leaves and reconnects, every frame of every client predicted by a model.
//! The cluster runs that one too: `tests/cluster_suites.rs`.

mod common;

use common::engine::Setup;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use roomchat::protocol::{
    self, ClientEvent, ErrorCode, EventName, MAX_ACK, MAX_ROOM_CHARS, MAX_TEXT_CHARS,
    MAX_USERNAME_CHARS,
};
use serde_json::{json, Value};

const SETUP: Setup = Setup::Memory;

#[path = "protocol/properties.rs"]
mod properties;

// ---------------------------------------------------------------------------
// Character pools. Each class is known by construction, so the expected
// verdict follows from which pools a string was drawn from.

/// Unicode White_Space that is not a control character (may pad or sit inside a name).
const BLANK: &[char] = &[' ', '\u{a0}', '\u{2000}', '\u{2028}', '\u{3000}'];
/// Control characters (Cc) that are also White_Space: trimmed off a name's ends.
const BLANK_CONTROL: &[char] = &['\t', '\n', '\r', '\u{b}', '\u{c}', '\u{85}'];
/// Control characters that are not White_Space.
const HARD_CONTROL: &[char] = &['\u{0}', '\u{7}', '\u{1b}', '\u{1c}', '\u{7f}', '\u{9f}'];
/// Visible characters of 1 to 4 UTF-8 bytes, and a zero-width space (format, not blank).
const VISIBLE: &[char] = &[
    'a', 'Z', '7', '#', 'é', 'ß', '中', '😀', '\u{200b}', '"', '\\',
];

fn pick(pool: &'static [char]) -> impl Strategy<Value = char> {
    proptest::sample::select(pool)
}

/// A length near 0, near `max`, or anywhere up to twice `max`.
fn length_around(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![0..=3usize, max - 2..=max + 2, 0..=2 * max]
}

/// A name as sent: blank padding around a core whose ends are not blank.
/// Returns (raw, core, core has a control character).
fn raw_name(max: usize) -> impl Strategy<Value = (String, String, bool)> {
    let padding = proptest::collection::vec(
        pick(BLANK).boxed().prop_union(pick(BLANK_CONTROL).boxed()),
        0..3,
    );
    let inner = prop_oneof![8 => pick(VISIBLE), 2 => pick(BLANK), 1 => pick(BLANK_CONTROL), 1 => pick(HARD_CONTROL)];
    let edge = prop_oneof![10 => pick(VISIBLE), 1 => pick(HARD_CONTROL)];
    (length_around(max), padding.clone(), padding)
        .prop_flat_map(move |(len, left, right)| {
            let middle = proptest::collection::vec(inner.clone(), len.saturating_sub(2));
            let ends = proptest::collection::vec(edge.clone(), len.min(2));
            (Just(left), middle, ends, Just(right))
        })
        .prop_map(|(left, middle, ends, right)| {
            let mut core: Vec<char> = Vec::new();
            core.extend(ends.first());
            core.extend(middle);
            core.extend(ends.get(1));
            let control = core
                .iter()
                .any(|c| BLANK_CONTROL.contains(c) || HARD_CONTROL.contains(c));
            let core: String = core.into_iter().collect();
            let raw = format!(
                "{}{core}{}",
                left.into_iter().collect::<String>(),
                right.into_iter().collect::<String>()
            );
            (raw, core, control)
        })
}

fn join(username: &str, room: &str) -> Result<ClientEvent<'static>, protocol::Rejection> {
    ClientEvent::parse_value(
        EventName::JoinRoom,
        Some(&json!({"username": username, "room": room})),
    )
}

fn chat(text: &str) -> Result<ClientEvent<'static>, protocol::Rejection> {
    ClientEvent::parse_value(EventName::ChatMessage, Some(&json!({ "text": text })))
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::String),
        proptest::sample::select(&["joinRoom", "chatMessage", "typing", "leaveRoom"][..])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                proptest::sample::select(
                    &["event", "data", "ack", "username", "room", "text", "typing", "x"][..]
                )
                .prop_map(str::to_owned),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn usernames_are_trimmed_and_bounded_in_characters((raw, core, control) in raw_name(MAX_USERNAME_CHARS)) {
        let len = core.chars().count();
        let valid = (1..=MAX_USERNAME_CHARS).contains(&len) && !control;
        match join(&raw, "room") {
            Ok(ClientEvent::JoinRoom { username, room, resume }) => {
                prop_assert!(valid, "accepted {raw:?}");
                prop_assert_eq!(resume, None);
                prop_assert_eq!(username.as_deref(), Some(core.as_str()));
                prop_assert_eq!(room, "room");
            }
            Ok(other) => prop_assert!(false, "joinRoom parsed as {other:?}"),
            Err(r) => {
                prop_assert!(!valid, "rejected {raw:?}: {}", r.message);
                prop_assert_eq!((r.code, r.field), (ErrorCode::InvalidField, Some("username")));
            }
        }
    }

    #[test]
    fn room_names_are_trimmed_and_bounded_in_characters((raw, core, control) in raw_name(MAX_ROOM_CHARS)) {
        let len = core.chars().count();
        let valid = (1..=MAX_ROOM_CHARS).contains(&len) && !control;
        match join("ann", &raw) {
            Ok(ClientEvent::JoinRoom { room, .. }) => {
                prop_assert!(valid, "accepted {raw:?}");
                prop_assert_eq!(room, core);
            }
            Ok(other) => prop_assert!(false, "joinRoom parsed as {other:?}"),
            Err(r) => {
                prop_assert!(!valid, "rejected {raw:?}: {}", r.message);
                prop_assert_eq!((r.code, r.field), (ErrorCode::InvalidField, Some("room")));
            }
        }
    }

    #[test]
    fn a_bad_username_is_reported_before_a_bad_room(len in 33usize..40) {
        let r = join(&"u".repeat(len), "").unwrap_err();
        prop_assert_eq!(r.field, Some("username"));
    }

}

proptest! {
    // Each case builds up to ~4000 characters; fewer cases keep the debug run short.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn texts_are_bounded_kept_exactly_and_free_of_most_controls(
        chars in length_around(MAX_TEXT_CHARS).prop_flat_map(|len| proptest::collection::vec(
            prop_oneof![
                6 => pick(VISIBLE),
                6 => pick(BLANK),
                3 => proptest::sample::select(&['\n', '\r', '\t'][..]),
                1 => proptest::sample::select(&['\u{b}', '\u{c}', '\u{85}'][..]),
                1 => pick(HARD_CONTROL),
            ],
            len,
        ))
    ) {
        let text: String = chars.iter().collect();
        let allowed_control = ['\n', '\r', '\t'];
        let blank = |c: &char| BLANK.contains(c) || BLANK_CONTROL.contains(c);
        let bad_control = chars
            .iter()
            .any(|c| HARD_CONTROL.contains(c) || (BLANK_CONTROL.contains(c) && !allowed_control.contains(c)));
        let valid = (1..=MAX_TEXT_CHARS).contains(&chars.len()) && !chars.iter().all(blank) && !bad_control;
        match chat(&text) {
            Ok(ClientEvent::ChatMessage { text: kept }) => {
                prop_assert!(valid, "accepted {text:?}");
                prop_assert_eq!(kept, text, "kept exactly, not trimmed");
            }
            Ok(other) => prop_assert!(false, "chatMessage parsed as {other:?}"),
            Err(r) => {
                prop_assert!(!valid, "rejected a valid text: {}", r.message);
                prop_assert_eq!((r.code, r.field), (ErrorCode::InvalidField, Some("text")));
            }
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn whole_acks_up_to_2_pow_53_minus_1_are_kept(n in prop_oneof![any::<u64>(), 0..=16u64, MAX_ACK - 8..=MAX_ACK + 8]) {
        let frame = format!(r#"{{"event":"typing","ack":{n}}}"#);
        match protocol::parse_envelope(&frame) {
            Ok(env) => {
                prop_assert!(n <= MAX_ACK);
                prop_assert_eq!(env.ack, Some(n));
            }
            Err(r) => {
                prop_assert!(n > MAX_ACK);
                prop_assert_eq!((r.code, r.ack), (ErrorCode::BadRequest, None));
            }
        }
    }

    #[test]
    fn fractional_negative_and_huge_acks_are_bad_requests(f in prop_oneof![
        any::<f64>(),
        (-1000i64..1000).prop_map(|n| n as f64 / 4.0),
        Just(MAX_ACK as f64), Just(MAX_ACK as f64 + 2.0), Just(-0.0),
    ]) {
        prop_assume!(f.is_finite());
        let whole = f.fract() == 0.0 && (0.0..=MAX_ACK as f64).contains(&f);
        let frame = json!({"event": "typing", "ack": f}).to_string();
        match protocol::parse_envelope(&frame) {
            Ok(env) => {
                prop_assert!(whole, "accepted ack {f}");
                prop_assert_eq!(env.ack, Some(f as u64));
            }
            Err(r) => {
                prop_assert!(!whole, "rejected ack {f}");
                prop_assert_eq!((r.code, r.ack), (ErrorCode::BadRequest, None));
            }
        }
    }

    #[test]
    fn since_is_a_whole_number_up_to_2_pow_53_minus_1(f in prop_oneof![
        any::<f64>(),
        (-1000i64..1000).prop_map(|n| n as f64 / 4.0),
        Just(MAX_ACK as f64), Just(MAX_ACK as f64 + 2.0), Just(-0.0),
    ]) {
        prop_assume!(f.is_finite());
        let whole = f.fract() == 0.0 && (0.0..=MAX_ACK as f64).contains(&f);
        let data = json!({"username": "a", "room": "r", "since": f, "epoch": "e"});
        match ClientEvent::parse_value(EventName::JoinRoom, Some(&data)) {
            Ok(ClientEvent::JoinRoom { resume: Some(r), .. }) => {
                prop_assert!(whole, "accepted since {f}");
                prop_assert_eq!(r.since, f as u64);
            }
            Ok(other) => prop_assert!(false, "joinRoom parsed as {other:?}"),
            Err(r) => {
                prop_assert!(!whole, "rejected since {f}");
                prop_assert_eq!((r.code, r.field), (ErrorCode::InvalidField, Some("since")));
            }
        }
    }

    #[test]
    fn an_ack_of_another_type_is_a_bad_request(ack in any_json()) {
        prop_assume!(!ack.is_number());
        let frame = json!({"event": "typing", "ack": ack}).to_string();
        let r = protocol::parse_envelope(&frame).unwrap_err();
        prop_assert_eq!((r.code, r.ack), (ErrorCode::BadRequest, None));
    }

    /// Any JSON: never a panic, and the envelope's verdict follows its shape.
    #[test]
    fn any_json_gets_an_envelope_or_the_right_error(value in any_json()) {
        let text = value.to_string();
        let result = protocol::parse_envelope(&text);
        let Value::Object(object) = &value else {
            prop_assert_eq!(result.unwrap_err().code, ErrorCode::BadJson);
            return Ok(());
        };
        let raw = |v: &Value| serde_json::value::to_raw_value(v).unwrap();
        let ack_ok = object.get("ack").is_none_or(|a| protocol::parse_ack(&raw(a)).is_some());
        let event = object.get("event").and_then(Value::as_str);
        match result {
            Ok(env) => {
                prop_assert!(ack_ok);
                prop_assert_eq!(Some(env.event.as_ref()), event);
                let data: Option<Value> = env.data.as_deref().map(|d| serde_json::from_str(d.get()).unwrap());
                prop_assert_eq!(data.as_ref(), object.get("data"));
                // And the event's data: an event, or an error naming a field.
                // An unknown event is one no client may send (`unknown_event`).
                if let Some(name) = EventName::parse(&env.event) {
                    if let Err(r) = ClientEvent::parse(name, env.data.as_deref()) {
                        prop_assert_eq!(r.code, ErrorCode::InvalidField);
                        prop_assert!(matches!(r.field, Some("data" | "username" | "room" | "text" | "typing")));
                    }
                }
            }
            Err(r) => {
                prop_assert_eq!(r.code, ErrorCode::BadRequest);
                prop_assert!(!ack_ok || event.is_none());
            }
        }
    }

    /// Any bytes, as the connection would see them after UTF-8 decoding.
    #[test]
    fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Err(r) = protocol::parse_envelope(text) {
                prop_assert!(matches!(r.code, ErrorCode::BadJson | ErrorCode::BadRequest));
            }
        }
    }
}

/// Found by the ack property: serde_json's default float parser may land one
/// ULP off, so `9007199254740991.0` read back as ...990 and the reply carried
/// another ack. (serde_json's `float_roundtrip` feature parses exactly.)
#[test]
fn an_ack_written_with_a_fraction_is_read_exactly() {
    let env = protocol::parse_envelope(r#"{"event":"typing","ack":9007199254740991.0}"#).unwrap();
    assert_eq!(env.ack, Some(MAX_ACK));
    let env = protocol::parse_envelope(r#"{"event":"typing","ack":7.0}"#).unwrap();
    assert_eq!(env.ack, Some(7));
}
