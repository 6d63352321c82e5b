//! One client's chat session, whatever its transport: takes what the codec
//! decoded, checks each request in the protocol's order (rate limit, event,
//! identity, room, fields) and hands it to the registry. It never touches a
//! socket; its answers go through the client's outbox. The connection's
//! identity (v3) lives here, once, whichever way the client proved it.

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info};

use crate::auth::{self, Identity};
use crate::codec::{engineio, Codec, Encoding, Inbound, Outgoing};
use crate::delivery::{ClientId, Mailbox, Refused, Wakes};
use crate::outbox::{Outbound, Outbox};
use crate::protocol::{
    self, AckData, ClientEvent, ConnectedData, Envelope, ErrorCode, EventName, Id, Limits,
    RawValue, Rejection, ServerEvent,
};
use crate::shared::{Admission, Shared};

/// What the connection does after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// The client said goodbye (Engine.IO close, Socket.IO disconnect).
    End,
}

pub(crate) struct Session {
    pub(crate) id: ClientId,
    encoding: Encoding,
    outbox: Arc<Outbox>,
    shared: Arc<Shared>,
    bucket: Option<TokenBucket>,
    auth: Auth,
    /// What the requests handled since the last `flush` queued and left
    /// to wake.
    wakes: Wakes,
}

/// Who the client is (v3).
#[derive(Debug)]
enum Auth {
    /// No key configured: the demo mode, where anyone may be anyone.
    Open,
    /// A key is configured and the client has not proven who it is yet:
    /// closed with 1008 if still so at `deadline`.
    Pending { deadline: Instant },
    /// Proven, until `expires` (the token's `exp` plus the leeway).
    Verified {
        identity: Identity,
        expires: Instant,
    },
    /// Out: its token expired, or it never proved who it was. Nothing it
    /// asks is carried out any more; its connection is closing.
    Ended(ErrorCode),
}

impl Session {
    /// A session for client `id`; `identity`: what its handshake proved
    /// (a native client's `Authorization` header).
    pub(crate) fn new(
        id: ClientId,
        encoding: Encoding,
        outbox: Arc<Outbox>,
        shared: Arc<Shared>,
        identity: Option<Identity>,
    ) -> Session {
        let now = Instant::now();
        let bucket = shared
            .config
            .rate_limit
            .0
            .map(|rate| TokenBucket::new(rate, now));
        let auth = match (&shared.verifier, identity) {
            (None, _) => Auth::Open,
            (Some(verifier), Some(identity)) => verified(verifier, identity),
            (Some(_), None) => Auth::Pending {
                deadline: now + shared.config.handshake_timeout,
            },
        };
        Session {
            id,
            encoding,
            outbox,
            shared,
            bucket,
            auth,
            wakes: Wakes::default(),
        }
    }

    /// The `connected` event: the client's id and the limits it must keep;
    /// with a key, that it must authenticate, or who its handshake proved.
    pub(crate) fn connected(&self) -> Arc<Outgoing> {
        let config = &self.shared.config;
        let identity = self.identity();
        let data = ConnectedData {
            id: Id(&self.shared.rooms.wire_id(self.id)),
            limits: Limits {
                max_message_bytes: config.max_message_bytes,
                max_text_chars: protocol::MAX_TEXT_CHARS,
                rate_limit: config.rate_limit.0,
            },
            auth: self.shared.verifier.as_ref().map(|_| "required"),
            user: identity.map(|i| i.sub.as_str()),
            name: identity.map(|i| i.name.as_str()),
        };
        Outgoing::event(&ServerEvent::Connected(data), None)
    }

    fn identity(&self) -> Option<&Identity> {
        match &self.auth {
            Auth::Verified { identity, .. } => Some(identity),
            _ => None,
        }
    }

    /// Whether the client may ask for anything but `authenticate`: no key
    /// is configured, or it proved who it is.
    pub(crate) fn admitted(&self) -> bool {
        matches!(self.auth, Auth::Open | Auth::Verified { .. })
    }

    /// When the session must be looked at again ([`Session::on_alarm`]):
    /// the end of the time to authenticate, or the token's expiry.
    pub(crate) fn alarm(&self) -> Option<Instant> {
        match &self.auth {
            Auth::Pending { deadline } => Some(*deadline),
            Auth::Verified { expires, .. } => Some(*expires),
            Auth::Open | Auth::Ended(_) => None,
        }
    }

    /// At or after [`Session::alarm`]: a client that never authenticated
    /// gets `unauthenticated` and is to be closed with 1008; one whose
    /// token expired gets `token_expired`, leaves its room (`userLeft` to
    /// the others) and is to be closed with 4001 (a Socket.IO client gets
    /// the `41` disconnect packet first). Returns the Close to send; none
    /// if it is not time yet. The caller flushes.
    pub(crate) fn on_alarm(&mut self, now: Instant) -> Option<(u16, &'static str)> {
        let (code, message, close) = match &self.auth {
            Auth::Pending { deadline } if now >= *deadline => (
                ErrorCode::Unauthenticated,
                "no valid token within the handshake timeout",
                (1008, "unauthenticated"),
            ),
            Auth::Verified { expires, .. } if now >= *expires => (
                ErrorCode::TokenExpired,
                "the token has expired; authenticate again on a new connection",
                (4001, "token expired"),
            ),
            _ => return None,
        };
        info!("client {}: {}; closing it", self.id, code.as_str());
        let sio = self.encoding == Encoding::EngineIo;
        if sio && code == ErrorCode::Unauthenticated {
            // Not in the namespace yet: its `connect_error`, not an event.
            self.shared.metrics.error_sent(code);
            let refusal = engineio::connect_error(&format!("{}: {message}", code.as_str()));
            self.queue(Outbound::Packet(refusal.into()));
        } else {
            // Not `reject`: the timer of long-polling sessions calls this,
            // and must not wait on a cluster's barrier for one session.
            self.send_error(Rejection::new(code, message));
        }
        self.auth = Auth::Ended(code);
        self.shared.rooms.disconnect(self.id, &mut self.wakes);
        if sio && code == ErrorCode::TokenExpired {
            self.queue(Outbound::Packet(engineio::DISCONNECT.into()));
        }
        Some(close)
    }

    /// Wakes whatever the requests handled so far queued for: their writes
    /// happen now. Call with no lock held, after each message or batch.
    pub(crate) fn flush(&mut self) {
        self.wakes.wake_all();
    }

    /// Acts on one decoded message. What it queues is written on `flush`.
    pub(crate) fn handle(&mut self, inbound: Inbound) -> Flow {
        match inbound {
            Inbound::Request(request) => {
                // Every client data frame takes a token, even a bad one.
                self.shared.metrics.message_received();
                let allowed = self.take_token();
                match request {
                    Ok(envelope) => self.on_envelope(envelope, allowed),
                    Err(rejection) => self.reject(rejection),
                }
            }
            Inbound::Reply(packet) => self.queue(Outbound::Packet(packet.into())),
            Inbound::Connect { reply, auth } => self.on_connect(reply, auth),
            Inbound::Close => return Flow::End,
            Inbound::Ignore => {}
        }
        Flow::Continue
    }

    /// Socket.IO's CONNECT to the main namespace: accepted (`reply`, then
    /// `connected`) without a key, or with a payload `{"token": str}` that
    /// verifies; else `44{"message": "<code>: <why>"}`, and the session
    /// stays open for another CONNECT.
    fn on_connect(&mut self, reply: String, payload: Option<&RawValue>) {
        if self.shared.verifier.is_some() && !self.admitted() {
            let token = payload.and_then(|p| {
                serde_json::from_str::<ConnectAuth>(p.get())
                    .ok()
                    .and_then(|a| a.token)
            });
            let outcome = match token {
                None => Err(Rejection::new(
                    ErrorCode::Unauthenticated,
                    "no token: connect with auth {token}",
                )),
                Some(token) => self.prove(&token),
            };
            if let Err(rejection) = outcome {
                let message = format!("{}: {}", rejection.code.as_str(), rejection.message);
                debug!("client {}: connect refused ({message})", self.id);
                self.shared.metrics.error_sent(rejection.code);
                let refusal = engineio::connect_error(&message);
                return self.queue(Outbound::Packet(refusal.into()));
            }
        }
        self.queue(Outbound::Packet(reply.into()));
        let connected = self.connected();
        self.queue(Outbound::Event(connected));
    }

    /// Checks `token` and makes its identity the client's: the first
    /// proof, or a refresh (same `sub`: the name and room stay, the new
    /// `exp` and `rooms` apply). A refusal leaves the client as it was.
    fn prove(&mut self, token: &str) -> Result<(), Rejection> {
        let verifier = self
            .shared
            .verifier
            .as_ref()
            .expect("only asked with a key configured");
        let mut identity = verifier
            .verify(token)
            .map_err(|r| Rejection::new(r.code, r.message))?;
        if let Some(current) = self.identity() {
            if current.sub != identity.sub {
                return Err(Rejection::new(
                    ErrorCode::Forbidden,
                    "a refresh must carry the same sub",
                ));
            }
            identity.name = current.name.clone();
            debug!("client {} refreshed its token", self.id);
        } else {
            info!(
                "client {} authenticated as user {:?}",
                self.id, identity.sub
            );
        }
        self.auth = verified(verifier, identity);
        Ok(())
    }

    /// `authenticate`: answered with `{ok, user, name, exp}`.
    fn authenticate(&mut self, token: &str, ack: Option<u64>) {
        if let Err(rejection) = self.prove(token) {
            return self.reject(rejection.with_ack(ack));
        }
        let Some(ack) = ack else { return };
        let identity = self.identity().expect("just proven");
        let data = AckData {
            user: Some(&identity.sub),
            name: Some(&identity.name),
            exp: Some(identity.exp),
            ..AckData::ok()
        };
        let event = Outgoing::event(&ServerEvent::Ack(data), Some(ack));
        self.shared.rooms.settle(self.id);
        self.queue(Outbound::Event(event));
    }

    /// False when the rate limit's bucket is empty.
    fn take_token(&mut self) -> bool {
        self.bucket.as_mut().is_none_or(|b| b.take(Instant::now()))
    }

    /// A request whose envelope is sound: the checks after `bad_json` and
    /// `bad_request`, in the protocol's order, then the registry.
    fn on_envelope(&mut self, envelope: Envelope, allowed: bool) {
        let Envelope { event, data, ack } = envelope;
        if !allowed {
            let limit = self.shared.config.rate_limit.0.unwrap_or_default();
            let message =
                format!("rate limit of {limit} frames per second exceeded; message dropped");
            return self.reject(Rejection::new(ErrorCode::RateLimited, message).with_ack(ack));
        }
        let name = EventName::parse(&event).filter(|&name| {
            // Without a key there is nothing to prove (the demo mode).
            name != EventName::Authenticate || self.shared.verifier.is_some()
        });
        let Some(name) = name else {
            let message = match event.as_ref() {
                "authenticate" => "unknown event \"authenticate\": this server has no key, \
                                   anyone may join under any name"
                    .to_owned(),
                _ => format!("unknown event {event:?}"),
            };
            return self.reject(Rejection::new(ErrorCode::UnknownEvent, message).with_ack(ack));
        };
        if name != EventName::Authenticate && !self.admitted() {
            let (code, message) = match self.auth {
                Auth::Ended(code) => (code, "this connection is closing"),
                _ => (
                    ErrorCode::Unauthenticated,
                    "authenticate first: send authenticate {token}",
                ),
            };
            return self.reject(Rejection::new(code, message).with_ack(ack));
        }
        let not_in_room = || {
            let message = format!("{event} needs a room: join one first");
            Rejection::new(ErrorCode::NotInRoom, message).with_ack(ack)
        };
        let verified = self.identity().is_some();
        let request = match ClientEvent::parse_for(name, data.as_deref(), verified) {
            Ok(request) => request,
            // `not_in_room` comes before `invalid_field`; asked only when
            // the fields are bad, as the registry checks it for good ones.
            Err(_) if name.needs_room() && !self.shared.rooms.in_room(self.id) => {
                return self.reject(not_in_room())
            }
            Err(rejection) => return self.reject(rejection.with_ack(ack)),
        };
        let (rooms, wakes) = (&self.shared.rooms, &mut self.wakes);
        let done = match request {
            ClientEvent::JoinRoom {
                username,
                room,
                resume,
            } => {
                // With a verified identity the name is the token's, and the
                // room one the token may join.
                let (username, user) = match &self.auth {
                    Auth::Verified { identity, .. } => {
                        if username.as_deref().is_some_and(|u| u != identity.name) {
                            let message =
                                format!("username must be the token's name {:?}", identity.name);
                            return self
                                .reject(Rejection::forbidden("username", message).with_ack(ack));
                        }
                        if !identity.may_join(&room) {
                            let message = format!("this token may not join {room:?}");
                            return self
                                .reject(Rejection::forbidden("room", message).with_ack(ack));
                        }
                        (identity.name.as_str(), Some(identity.sub.as_str()))
                    }
                    _ => (username.as_deref().expect("required without a token"), None),
                };
                let resume = resume.as_ref().map(|r| (r.since, &*r.epoch));
                let done = rooms.join(self.id, username, user, &room, resume, ack, wakes);
                if done.is_ok() {
                    info!("client {} joined {room:?} as {username:?}", self.id);
                }
                done
            }
            ClientEvent::ChatMessage { text } => {
                debug!("client {} says {text:?}", self.id);
                rooms.chat(self.id, &text, ack, wakes)
            }
            ClientEvent::Typing { typing } => rooms.typing(self.id, typing, ack, wakes),
            ClientEvent::LeaveRoom => rooms.leave(self.id, ack, wakes),
            ClientEvent::Authenticate { token } => {
                self.authenticate(&token, ack);
                Ok(())
            }
        };
        match done {
            Ok(()) => {}
            Err(Refused::NotInRoom) => self.reject(not_in_room()),
            Err(Refused::Unavailable) => {
                let message =
                    format!("{event} not carried out: the cluster's Redis is unreachable");
                self.reject(Rejection::new(ErrorCode::Unavailable, message).with_ack(ack));
            }
        }
    }

    /// Answers a bad request with an `error` event, after whatever the
    /// client's earlier requests caused (in a cluster those may still be on
    /// their way).
    fn reject(&mut self, rejection: Rejection) {
        self.shared.rooms.settle(self.id);
        self.send_error(rejection);
    }

    /// Queues an `error` event for this client, now.
    fn send_error(&mut self, rejection: Rejection) {
        let (code, message) = (rejection.code.as_str(), &rejection.message);
        debug!("client {}: {code} ({message})", self.id);
        self.shared.metrics.error_sent(rejection.code);
        let error = Outgoing::event(&ServerEvent::Error(rejection.data()), rejection.ack);
        self.queue(Outbound::Event(error));
    }

    /// Queues something for this client alone, written on `flush`.
    fn queue(&mut self, item: Outbound) {
        if self.outbox.enqueue_for_wake(item) {
            let mailbox: Arc<dyn Mailbox> = self.outbox.clone();
            self.wakes.add(&mailbox);
        }
    }
}

/// A connected client, whatever its transport: its chat session, its
/// decoder, its queue, and the guards that give back its room membership
/// and its place under `--max-connections` when it goes.
pub(crate) struct Client {
    pub(crate) session: Session,
    pub(crate) codec: Codec,
    pub(crate) outbox: Arc<Outbox>,
    // Dropped in this order, with the client: the room hears `userLeft`,
    // then the place under `--max-connections` frees.
    _registration: Registration,
    _admission: Admission,
}

impl Client {
    /// Registers a client speaking `encoding`, whose queue is written to
    /// `socket` (none for a long-polling client, whose GETs take it). None
    /// once shutdown has begun.
    pub(crate) fn register(
        encoding: Encoding,
        socket: Option<Arc<TcpStream>>,
        admission: Admission,
        shared: &Arc<Shared>,
        identity: Option<Identity>,
    ) -> Option<Client> {
        let id = shared.next_client_id();
        let metrics = Arc::clone(&shared.metrics);
        let pool = Arc::clone(&shared.pool);
        let outbox = Arc::new(Outbox::new(socket, encoding, metrics, pool));
        let registration = Registration::register(id, outbox.clone(), shared)?;
        info!("client {id} connected ({encoding:?})");
        Some(Client {
            session: Session::new(
                id,
                encoding,
                Arc::clone(&outbox),
                Arc::clone(shared),
                identity,
            ),
            codec: Codec::new(encoding, id),
            _registration: registration,
            outbox,
            _admission: admission,
        })
    }

    pub(crate) fn id(&self) -> ClientId {
        self.session.id
    }

    /// One text message from the client (a WebSocket text frame, or one
    /// long-polling packet): decoded, then acted on.
    pub(crate) fn receive(&mut self, text: &str) -> Flow {
        let inbound = self.codec.decode(text);
        let connect = matches!(inbound, Inbound::Connect { .. });
        let flow = self.session.handle(inbound);
        if connect && self.session.admitted() {
            self.codec.joined_namespace();
        }
        flow
    }

    /// A binary WebSocket frame from the client.
    pub(crate) fn receive_binary(&mut self) -> Flow {
        let inbound = self.codec.decode_binary();
        self.session.handle(inbound)
    }

    /// The client leaves its room (`userLeft`) and is forgotten; its place
    /// under `--max-connections` is handed back to the caller, to keep until
    /// its writer has ended (a writer counts against the same place).
    pub(crate) fn leave(self) -> Admission {
        let Client {
            _registration,
            _admission,
            ..
        } = self;
        drop(_registration);
        _admission
    }
}

/// A client that leaves its room when dropped: whatever way its connection
/// ends, a panic included, the room hears `userLeft` and forgets it.
struct Registration {
    id: ClientId,
    shared: Arc<Shared>,
}

impl Registration {
    fn register(id: ClientId, mailbox: Arc<dyn Mailbox>, shared: &Arc<Shared>) -> Option<Self> {
        shared.rooms.connect(id, mailbox).ok()?;
        shared.metrics.client_connected();
        Some(Registration {
            id,
            shared: Arc::clone(shared),
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut wakes = Wakes::default();
        self.shared.rooms.disconnect(self.id, &mut wakes);
        self.shared.metrics.client_gone();
        wakes.wake_all();
        info!("client {} disconnected", self.id);
    }
}

/// A verified identity and when it stops being one: `exp` plus the
/// leeway, counted on the monotonic clock from now.
fn verified(verifier: &auth::Verifier, identity: Identity) -> Auth {
    let left = verifier
        .expires_at(&identity)
        .saturating_sub(auth::unix_now());
    let expires = Instant::now() + Duration::from_secs(left.min(MAX_SESSION_SECS));
    Auth::Verified { identity, expires }
}

/// A token's life is counted at most this long (about 31 years), so that
/// the `Instant` it becomes cannot overflow.
const MAX_SESSION_SECS: u64 = 1 << 30;

/// Socket.IO's CONNECT payload, as `io({auth: {token}})` sends it.
#[derive(serde::Deserialize)]
struct ConnectAuth {
    token: Option<String>,
}

/// The rate limit: `rate` tokens a second into a bucket of `2 × rate`, full at the start.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            tokens: 2.0 * f64::from(rate),
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(2.0 * self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_starts_full_at_twice_the_rate_and_refills() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(5, t0);
        assert_eq!((0..12).filter(|_| bucket.take(t0)).count(), 10);
        assert!(!bucket.take(t0 + Duration::from_millis(100)));
        assert!(bucket.take(t0 + Duration::from_millis(300)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..30).filter(|_| bucket.take(later)).count(),
            10,
            "capped at 2 x rate"
        );
    }
}
