//! Transports as codecs: how a client's text becomes requests, and how a
//! server event becomes the bytes that client reads. Pure: no sockets, no
//! threads; the connection layer does the I/O.
//!
//! - [`native`]: roomchat's JSON frames.
//! - [`engineio`]: Engine.IO 4 + Socket.IO 4 packets.
//! - [`frame`]: the WebSocket frames the server writes.
//!
//! A server event is an [`Outgoing`]: built once, shared by every
//! recipient, and encoded at most once per [`Encoding`].

pub(crate) mod engineio;
pub(crate) mod frame;
pub(crate) mod native;

use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;
use serde_json::value::RawValue;

use crate::protocol::{Envelope, Rejection, ServerEvent};

/// What one message from a client means, whatever its transport.
#[derive(Debug)]
pub(crate) enum Inbound<'a> {
    /// A chat request, or why it cannot be one. Every one takes a
    /// rate-limit token, as every client data frame does.
    Request(Result<Envelope<'a>, Rejection>),
    /// A transport packet to answer with at once (Engine.IO's pong, a
    /// refused namespace); not a chat event.
    Reply(String),
    /// The client asks to join Socket.IO's main namespace: if the session
    /// accepts (`auth`: the CONNECT's payload), answer with `reply`, then
    /// send `connected`.
    Connect {
        reply: String,
        auth: Option<&'a RawValue>,
    },
    /// The client ends the session.
    Close,
    /// Nothing to do.
    Ignore,
}

/// A client's decoder: the transport it speaks, and that transport's state.
#[derive(Debug)]
pub(crate) enum Codec {
    Native,
    EngineIo(engineio::Decoder),
}

impl Codec {
    /// A fresh decoder for a client speaking `encoding`; `id` is what
    /// Socket.IO's connect answer calls its `sid`.
    pub(crate) fn new(encoding: Encoding, id: impl std::fmt::Display) -> Codec {
        match encoding {
            Encoding::Native => Codec::Native,
            Encoding::EngineIo => Codec::EngineIo(engineio::Decoder::new(id.to_string())),
        }
    }

    /// One text message (a WebSocket text frame, or one polling packet).
    pub(crate) fn decode<'a>(&mut self, text: &'a str) -> Inbound<'a> {
        match self {
            Codec::Native => native::decode(text),
            Codec::EngineIo(decoder) => decoder.decode(text),
        }
    }

    /// The session accepted the client's Socket.IO CONNECT.
    pub(crate) fn joined_namespace(&mut self) {
        if let Codec::EngineIo(decoder) = self {
            decoder.joined_namespace();
        }
    }

    /// A binary WebSocket frame, which neither transport accepts.
    pub(crate) fn decode_binary(&mut self) -> Inbound<'static> {
        match self {
            Codec::Native => Inbound::Request(Err(Rejection::new(
                crate::protocol::ErrorCode::BadRequest,
                "binary frames are not supported",
            ))),
            Codec::EngineIo(decoder) => decoder.decode_binary(),
        }
    }
}

/// How a server event is put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `{"event": …, "data": …}` in a WebSocket text frame.
    Native,
    /// A Socket.IO packet in an Engine.IO message, in a WebSocket text frame.
    EngineIo,
}

/// One server event: a name and its data, plus the `ack` it answers.
/// Built once and shared (an `Arc`) by every recipient; the WebSocket frame
/// for each encoding is made by the first writer that needs it, then reused.
pub struct Outgoing {
    pub(crate) name: &'static str,
    pub(crate) ack: Option<u64>,
    data: OnceLock<Box<RawValue>>,
    /// How to build `data` for an event made with [`Outgoing::joined_later`].
    later: Mutex<Option<Build>>,
    weight: usize,
    frames: [OnceLock<Vec<u8>>; 2],
}

type Build = Box<dyn FnOnce() -> Box<RawValue> + Send>;

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("name", &self.name)
            .field("ack", &self.ack)
            .field("data", &self.data.get())
            .finish_non_exhaustive()
    }
}

impl Outgoing {
    /// A server event, its data serialized now.
    pub(crate) fn event(event: &ServerEvent<'_>, ack: Option<u64>) -> Arc<Outgoing> {
        Outgoing::with_data(event.name(), event.data(), ack)
    }

    /// Event data given as JSON, for the codecs' unit tests.
    #[cfg(test)]
    pub(crate) fn new<T: Serialize + ?Sized>(
        name: &'static str,
        data: &T,
        ack: Option<u64>,
    ) -> Arc<Outgoing> {
        Outgoing::with_data(name, to_raw(data), ack)
    }

    fn with_data(name: &'static str, data: Box<RawValue>, ack: Option<u64>) -> Arc<Outgoing> {
        let weight = data.get().len() + OVERHEAD;
        Arc::new(Outgoing {
            name,
            ack,
            data: OnceLock::from(data),
            later: Mutex::new(None),
            weight,
            frames: Default::default(),
        })
    }

    /// A `joined` event whose data is serialized when first needed, by
    /// whoever needs it first (a writer, outside every lock); `weight` is
    /// its size as well as it is known now. `joined` grows with the room:
    /// the engine takes a snapshot under its lock, `build` writes it.
    pub(crate) fn joined_later(
        weight: usize,
        build: impl FnOnce() -> Box<RawValue> + Send + 'static,
    ) -> Arc<Outgoing> {
        Arc::new(Outgoing {
            name: ServerEvent::JOINED,
            ack: None,
            data: OnceLock::new(),
            later: Mutex::new(Some(Box::new(build))),
            weight: weight + OVERHEAD,
            frames: Default::default(),
        })
    }

    /// The event's name, as the protocol spells it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The event's `data`, as JSON text.
    pub fn data(&self) -> &str {
        self.raw().get()
    }

    /// The `ack` this event answers, if it is an answer.
    pub fn ack(&self) -> Option<u64> {
        self.ack
    }

    pub(crate) fn raw(&self) -> &RawValue {
        self.data.get_or_init(|| {
            let build = self.later.lock().unwrap_or_else(|p| p.into_inner()).take();
            build.expect("an event's data is either given or built later")()
        })
    }

    /// The complete WebSocket frame in `encoding`.
    pub(crate) fn frame(&self, encoding: Encoding) -> &[u8] {
        self.frames[encoding as usize].get_or_init(|| {
            // One allocation: the text is written after room for the
            // frame's header, which goes in front once the length is known.
            let mut out = Vec::with_capacity(frame::MAX_HEADER + self.weight);
            out.resize(frame::MAX_HEADER, 0);
            match encoding {
                Encoding::Native => native::encode_into(self, &mut out),
                Encoding::EngineIo => engineio::encode_into(self, &mut out),
            }
            frame::text_in_place(out)
        })
    }

    /// A size for queue accounting, known before any encoding.
    pub(crate) fn weight(&self) -> usize {
        self.weight
    }
}

/// The bytes an encoding adds around an event's data, roughly.
const OVERHEAD: usize = 48;

/// Serializes event data. Event data is plain JSON (strings, numbers,
/// objects): it always serializes.
pub(crate) fn to_raw<T: Serialize + ?Sized>(data: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(data).expect("event data is plain JSON and always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_encoding_is_made_once_and_framed() {
        let ev = Outgoing::new("ack", &json!({"ok": true}), Some(7));
        let native = ev.frame(Encoding::Native);
        assert_eq!(
            &native[2..],
            br#"{"event":"ack","ack":7,"data":{"ok":true}}"#
        );
        assert!(std::ptr::eq(native, ev.frame(Encoding::Native)));
        assert_eq!(&ev.frame(Encoding::EngineIo)[2..], br#"437[{"ok":true}]"#);
    }

    #[test]
    fn data_built_later_is_built_once_when_first_needed() {
        let ev = Outgoing::joined_later(10, || to_raw(&json!({"users": []})));
        assert_eq!(ev.weight(), 10 + OVERHEAD);
        assert_eq!(ev.data(), r#"{"users":[]}"#);
        assert_eq!(
            &ev.frame(Encoding::Native)[2..],
            br#"{"event":"joined","data":{"users":[]}}"#
        );
    }
}
