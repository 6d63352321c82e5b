//! One client's chat session, whatever its transport: takes what the codec
//! decoded, checks each request in the protocol's order (rate limit, event,
//! room, fields) and hands it to the registry. It never touches a socket;
//! its answers go through the client's outbox.

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, info};

use crate::codec::{Codec, Encoding, Inbound, Outgoing};
use crate::delivery::{ClientId, Mailbox, Refused, Wakes};
use crate::outbox::{Outbound, Outbox};
use crate::protocol::{
    self, ClientEvent, ConnectedData, Envelope, ErrorCode, EventName, Id, Limits, Rejection,
    ServerEvent,
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
    outbox: Arc<Outbox>,
    shared: Arc<Shared>,
    bucket: Option<TokenBucket>,
    /// What the requests handled since the last `flush` queued and left
    /// to wake.
    wakes: Wakes,
}

impl Session {
    pub(crate) fn new(id: ClientId, outbox: Arc<Outbox>, shared: Arc<Shared>) -> Session {
        let bucket = shared
            .config
            .rate_limit
            .0
            .map(|rate| TokenBucket::new(rate, Instant::now()));
        Session {
            id,
            outbox,
            shared,
            bucket,
            wakes: Wakes::default(),
        }
    }

    /// The `connected` event: the client's id and the limits it must keep.
    pub(crate) fn connected(&self) -> Arc<Outgoing> {
        let config = &self.shared.config;
        let data = ConnectedData {
            id: Id(&self.shared.rooms.wire_id(self.id)),
            limits: Limits {
                max_message_bytes: config.max_message_bytes,
                max_text_chars: protocol::MAX_TEXT_CHARS,
                rate_limit: config.rate_limit.0,
            },
        };
        Outgoing::event(&ServerEvent::Connected(data), None)
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
            Inbound::Connect(packet) => {
                self.queue(Outbound::Packet(packet.into()));
                let connected = self.connected();
                self.queue(Outbound::Event(connected));
            }
            Inbound::Close => return Flow::End,
            Inbound::Ignore => {}
        }
        Flow::Continue
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
        let Some(name) = EventName::parse(&event) else {
            let message = format!("unknown event {event:?}");
            return self.reject(Rejection::new(ErrorCode::UnknownEvent, message).with_ack(ack));
        };
        let not_in_room = || {
            let message = format!("{event} needs a room: join one first");
            Rejection::new(ErrorCode::NotInRoom, message).with_ack(ack)
        };
        let request = match ClientEvent::parse(name, data.as_deref()) {
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
                let resume = resume.as_ref().map(|r| (r.since, &*r.epoch));
                let done = rooms.join(self.id, &username, &room, resume, ack, wakes);
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
    ) -> Option<Client> {
        let id = shared.next_client_id();
        let metrics = Arc::clone(&shared.metrics);
        let pool = Arc::clone(&shared.pool);
        let outbox = Arc::new(Outbox::new(socket, encoding, metrics, pool));
        let registration = Registration::register(id, outbox.clone(), shared)?;
        info!("client {id} connected ({encoding:?})");
        Some(Client {
            session: Session::new(id, Arc::clone(&outbox), Arc::clone(shared)),
            codec: Codec::new(encoding, id),
            _registration: registration,
            outbox,
            _admission: admission,
        })
    }

    pub(crate) fn id(&self) -> ClientId {
        self.session.id
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
