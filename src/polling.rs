//! Engine.IO 4 long-polling on the HTTP port, so that a Socket.IO page
//! calling `io()` with default options works unchanged. A long-polling
//! client is a client like any other (the same `Client`: session, codec,
//! bounded queue, admission); what differs is only how bytes move:
//!
//! - `GET ?EIO=4&transport=polling` opens a session: the open packet, with
//!   an unguessable `sid`.
//! - `GET …&sid=` is held until something is queued for the client (at the
//!   latest the next ping), then answers with what is queued, at most
//!   `MAX_PACKETS` packets joined by `\x1e` (the rest wait for the next
//!   GET). The GET is the client's writer: no thread waits for an idle
//!   polling client between its requests. What an answer carries counts
//!   toward the client's bounds until the answer is written, and a GET
//!   that comes while the previous answer is still being written waits
//!   for it: a client that never reads its answers fills its bounds like
//!   any other and is cut off.
//! - `POST …&sid=` carries packets from the client, decoded and handled by
//!   the same codec and session as over WebSocket.
//! - A WebSocket with `sid=` takes the session over (`2probe`, `3probe`,
//!   `5`): the queue is handed to a WebSocket writer, so no frame is lost
//!   or repeated across the upgrade. While it probes, every GET is answered
//!   with a noop at once, so the client can pause polling; noops are never
//!   queued (a queued one could reach the WebSocket).
//!
//! One timer thread sends every session its pings, and ends the sessions
//! that went silent past the ping interval plus the ping timeout.
//!
//! Where engine.io and roomchat differ, roomchat's rules win: a packet that
//! cannot be decoded gets an `error` event and the session goes on.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, info};
use tungstenite::Message;

use crate::codec::{engineio, frame, Encoding};
use crate::connection::{self, Attached};
use crate::httpconn::{answer, header, plain, switch_protocols, Answer, Body, Conn, Head, Refusal};
use crate::outbox::{Outbound, Outbox, Taken};
use crate::session::{Client, Flow};
use crate::shared::Shared;

/// How often the timer looks at the sessions.
const TICK: Duration = Duration::from_millis(250);
/// Packets in one payload are separated by this byte (Engine.IO 4).
const SEPARATOR: char = '\u{1e}';
/// Packets in one answer at most: python-engineio refuses a payload of
/// more (its `max_decode_packets`), and drops the session.
const MAX_PACKETS: usize = 16;

/// The long-polling sessions, by `sid`.
pub(crate) struct Polling {
    sessions: Mutex<HashMap<String, Arc<Poll>>>,
    shared: Arc<Shared>,
}

/// One long-polling session.
struct Poll {
    sid: String,
    outbox: Arc<Outbox>,
    state: Mutex<PollState>,
    /// Where the session's GET stands: a second one while one is held is
    /// refused; one while an answer is being written waits for it.
    get: Mutex<Get>,
    get_done: Condvar,
    /// Releases a held GET without queuing anything for the client.
    release: (Sender<Release>, Receiver<Release>),
}

/// What a held GET is released with.
#[derive(Debug, Clone, Copy)]
enum Release {
    /// `6`: poll again (the client is upgrading, or said goodbye).
    Noop,
    /// `1`: the session is over.
    Close,
}

/// Where a session's GET stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Get {
    Idle,
    /// A GET waits for something to send.
    Held,
    /// An answer is being written (what it carries still counts).
    Writing,
}

/// A GET's answer being written: the items it carries, which count toward
/// the client's bounds until it is dropped (the answer sent, or given up).
struct Answering {
    poll: Arc<Poll>,
    items: Vec<Outbound>,
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.poll.outbox.written(&self.items);
        *self.poll.get() = Get::Idle;
        self.poll.get_done.notify_all();
    }
}

struct PollState {
    /// The client, until it upgrades or the session ends.
    client: Option<Client>,
    /// When a packet last came from the client.
    heard: Instant,
    next_ping: Instant,
    /// A WebSocket is probing: at most one at a time per session.
    probing: bool,
    /// The probing WebSocket has sent `2probe` and may take the session over.
    upgrading: bool,
    /// A WebSocket took the session over: polling requests get `400`.
    upgraded: bool,
    /// The server ends the session once its close packet is written.
    closing: bool,
}

impl Polling {
    pub(crate) fn new(shared: Arc<Shared>) -> Polling {
        Polling {
            sessions: Mutex::default(),
            shared,
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<Poll>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live session `sid`. One gone silent is ended here, if the timer
    /// has not got to it yet.
    fn find(&self, sid: &str) -> Option<Arc<Poll>> {
        let poll = self.sessions().get(sid).cloned()?;
        if self.silent(&poll.state()) {
            self.end(&poll, "silent past the ping timeout", Release::Close);
            return None;
        }
        Some(poll)
    }

    /// Silent past the ping interval plus the ping timeout: the client
    /// missed a ping and the time it had to answer it.
    fn silent(&self, state: &PollState) -> bool {
        let config = &self.shared.config;
        let limit = config.ping_interval + config.ping_timeout();
        state.client.is_some() && state.heard.elapsed() >= limit
    }

    /// A long-polling request on `conn`. False when the connection ends.
    #[inline(never)]
    pub(crate) fn serve(&self, conn: &mut Conn, head: &Head) -> bool {
        let shared = &self.shared;
        let origin = head.header("Origin");
        let (answer, keep, answering) = match self.answer(conn, head) {
            Ok(answer) => answer,
            Err(refusal) => (refusal.into_answer(), head.body() == Body::None, None),
        };
        let mut answer = answer
            .with_header(header("Cache-Control", "no-store"))
            .with_header(header("Vary", "Origin"));
        if let Some(origin) = origin.filter(|o| shared.handshake_origins.allows(o)) {
            answer.add_header(header("Access-Control-Allow-Origin", origin));
            answer.add_header(header("Access-Control-Allow-Credentials", "true"));
        }
        // A body on anything but a POST we read is not read: it ends the
        // connection, so that it is never taken for the next request.
        let body_read = head.body() == Body::None || head.method() == "POST";
        let keep = keep && body_read && head.keep_alive() && !shared.stopping();
        let sent = conn.send(answer, head.version(), false, shared.answer_deadline());
        drop(answering);
        if sent.is_err() || !keep {
            conn.close();
            return false;
        }
        true
    }

    /// Checks a request as engine.io does (origin, sid, method, version)
    /// and answers it; the bool says whether the connection may go on. A
    /// GET's answer comes with what it carries, held until it is written.
    fn answer(
        &self,
        conn: &mut Conn,
        head: &Head,
    ) -> Result<(Answer, bool, Option<Answering>), Refusal> {
        if let Some(origin) = head.header("Origin") {
            if !self.shared.handshake_origins.allows(origin) {
                return Err(Refusal::engine_io(4, "Forbidden"));
            }
        }
        let Some(sid) = head.param("sid") else {
            if head.method() != "GET" {
                return Err(Refusal::engine_io(2, "Bad handshake method"));
            }
            if head.param("EIO") != Some("4") {
                return Err(Refusal::engine_io(5, "Unsupported protocol version"));
            }
            return Ok((self.open(), true, None));
        };
        let poll = self
            .find(sid)
            .ok_or(Refusal::engine_io(1, "Session ID unknown"))?;
        if poll.state().upgraded {
            // The session lives on, over its WebSocket.
            return Err(Refusal::engine_io(3, "Bad request"));
        }
        match head.method() {
            "GET" => {
                let (answer, answering) = self.poll(&poll);
                Ok((answer, true, answering))
            }
            "POST" => {
                let (answer, keep) = self.post(conn, head, &poll);
                Ok((answer, keep, None))
            }
            _ => Err(Refusal::engine_io(2, "Bad handshake method")),
        }
    }

    /// A new session: the open packet.
    fn open(&self) -> Answer {
        let shared = &self.shared;
        if shared.stopping() {
            return plain(503, "server is shutting down");
        }
        let Some(admission) = shared.admit() else {
            return plain(503, "too many connections");
        };
        let Some(client) = Client::register(Encoding::EngineIo, None, admission, shared, None)
        else {
            return plain(503, "server is shutting down");
        };
        let sid = engineio::new_sid();
        let config = &shared.config;
        let open = engineio::open_packet(
            &sid,
            &["websocket"],
            config.ping_interval,
            config.ping_timeout(),
            config.max_message_bytes,
        );
        let now = Instant::now();
        let poll = Arc::new(Poll {
            sid: sid.clone(),
            outbox: Arc::clone(&client.outbox),
            state: Mutex::new(PollState {
                client: Some(client),
                heard: now,
                next_ping: now + config.ping_interval,
                probing: false,
                upgrading: false,
                upgraded: false,
                closing: false,
            }),
            get: Mutex::new(Get::Idle),
            get_done: Condvar::new(),
            release: crossbeam_channel::bounded(1),
        });
        self.sessions().insert(sid, poll);
        packets(open.into_bytes())
    }

    /// A held GET: waits for what is queued (the next ping at the latest)
    /// and answers with it, `MAX_PACKETS` at most.
    fn poll(&self, poll: &Arc<Poll>) -> (Answer, Option<Answering>) {
        if poll.state().upgrading {
            return (packets(b"6".to_vec()), None);
        }
        if !self.begin_get(poll) {
            // Two GETs at once: engine.io ends such a session, so as to
            // keep one order. The held one gets the close packet.
            self.end(poll, "overlapping polls", Release::Close);
            return (answer(400, "text/plain; charset=utf-8", Vec::new()), None);
        }
        let (_, release) = &poll.release;
        while release.try_recv().is_ok() {} // meant for an earlier GET
        let wait = self.shared.config.ping_interval + TICK * 4;
        let mut payload = Vec::new();
        let mut items = Vec::new();
        // The session may have ended while this GET waited its turn.
        let ended = poll.state().client.is_none();
        let taken = if ended {
            Taken::Other(Release::Close)
        } else {
            poll.outbox.take_or(release, wait)
        };
        match taken {
            Taken::Item(first) => {
                let mut item = Some(first);
                let mut count = 0;
                while let Some(next) = item {
                    let closing = matches!(next, Outbound::Close(_));
                    count += usize::from(append(&mut payload, &next));
                    items.push(next);
                    item = if closing || count == MAX_PACKETS {
                        None
                    } else {
                        poll.outbox.try_take()
                    };
                }
            }
            Taken::Other(Release::Close) => payload.push(b'1'),
            Taken::Other(Release::Noop) | Taken::Nothing => payload.push(b'6'),
        }
        *poll.get() = Get::Writing;
        let answering = Answering {
            poll: Arc::clone(poll),
            items,
        };
        (packets(payload), Some(answering))
    }

    /// Marks a GET held. One that comes while the previous answer is still
    /// being written waits for it (until that write's deadline, at most);
    /// false if another GET is held, or the write is not over by then.
    fn begin_get(&self, poll: &Poll) -> bool {
        let deadline = self.shared.answer_deadline();
        let mut get = poll.get();
        while *get == Get::Writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            get = poll
                .get_done
                .wait_timeout(get, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if *get == Get::Held {
            return false;
        }
        *get = Get::Held;
        true
    }

    /// A POST: the client's packets, decoded and handled in order. A body
    /// too large ends the session; one not read ends the connection.
    fn post(&self, conn: &mut Conn, head: &Head, poll: &Poll) -> (Answer, bool) {
        let max = self.shared.config.max_message_bytes;
        let len = match head.body() {
            Body::None => 0,
            Body::Length(len) if len <= max as u64 => len as usize,
            Body::Length(_) => {
                self.end(poll, "a payload over the size limit", Release::Close);
                return (answer(413, "text/plain; charset=utf-8", Vec::new()), false);
            }
            Body::Unknown | Body::Invalid => {
                return (plain(411, "a Content-Length is required"), false)
            }
        };
        let deadline = Instant::now() + self.shared.config.handshake_timeout;
        if head.has_token("Expect", "100-continue") {
            let _ = conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n", deadline);
        }
        let Ok(body) = conn.read_body(len, deadline) else {
            return (plain(408, "the body did not arrive in time"), false);
        };
        let Ok(body) = String::from_utf8(body) else {
            self.end(poll, "a payload that is not text", Release::Close);
            return (answer(400, "text/plain; charset=utf-8", Vec::new()), true);
        };
        let mut state = poll.state();
        let Some(client) = state.client.as_mut() else {
            drop(state);
            return (
                Refusal::engine_io(1, "Session ID unknown").into_answer(),
                true,
            );
        };
        let mut goodbye = false;
        for packet in body.split(SEPARATOR).filter(|p| !p.is_empty()) {
            if client.receive(packet) == Flow::End {
                goodbye = true;
                break;
            }
        }
        client.session.flush();
        state.heard = Instant::now();
        drop(state);
        if goodbye {
            // The client closes: its held GET is told to poll no more.
            self.end(poll, "the client closed it", Release::Noop);
        }
        (answer(200, "text/html", b"ok".to_vec()), true)
    }

    /// A WebSocket taking over session `sid`: answers the probe, and on the
    /// client's `5` hands it the queue and returns the client, for this
    /// thread to read (`connection::run`). A probe that fails leaves the
    /// session polling.
    #[inline(never)]
    pub(crate) fn upgrade(
        &self,
        mut conn: Conn,
        sid: &str,
        accept_key: &str,
        deadline: Instant,
    ) -> Option<Attached> {
        let shared = &self.shared;
        // Claim the session's one probe: a second WebSocket for the same
        // session, while one is probing, is refused like an unknown sid.
        let poll = self.find(sid).filter(|p| {
            let mut state = p.state();
            let free = state.client.is_some() && !state.probing;
            state.probing |= free;
            free
        });
        let Some(poll) = poll else {
            let refusal = Refusal::engine_io(1, "Session ID unknown");
            refusal.send(&mut conn, shared.answer_deadline());
            return None;
        };
        let upgraded = switch_protocols(&conn, accept_key, deadline)
            .is_ok()
            .then(|| {
                let socket = Arc::clone(&conn.socket);
                let mut ws = connection::websocket(Arc::clone(&socket), conn.pending, None, shared);
                // The probe is part of the handshake, with the handshake's deadline
                // (engine.io's own upgrade timeout is 10 s, as our default), from
                // the 101 to the client's `5`, whatever it sends meanwhile.
                ws.get_mut()
                    .set_deadline(Instant::now() + shared.config.handshake_timeout);
                (self.probe(&mut ws, &poll), socket, ws)
            });
        let mut state = poll.state();
        state.probing = false;
        state.upgrading = false;
        let Some((true, socket, mut ws)) = upgraded else {
            debug!("session {sid}: upgrade probe failed");
            return None;
        };
        let client = {
            state.upgraded = true;
            let client = state.client.take();
            drop(state);
            client
        };
        // None: the session ended meanwhile.
        let client = client?;
        // A GET still held gets the close packet: polling is over.
        let _ = poll.release.0.try_send(Release::Close);
        info!("client {} upgraded to WebSocket", client.id());
        // From here the queue is written to this socket, by a writer.
        poll.outbox.attach(socket);
        let stream = ws.get_mut();
        stream.queue_to(Arc::clone(&poll.outbox));
        stream.set_deadline(Instant::now() + shared.config.idle_timeout);
        Some((Box::new(client), ws))
    }

    /// The probe: `2probe` is answered `3probe` (directly: the socket has
    /// no writer yet) and the session marked upgrading, which releases a
    /// held GET with a noop; true once the client sends `5`.
    fn probe(&self, ws: &mut connection::Socket, poll: &Poll) -> bool {
        // Read without `connection::next_message`, which would move the
        // deadline on with every message: a probe sending Pings must not
        // outlive the handshake deadline.
        loop {
            let message = match ws.read() {
                Ok(message) => message,
                // A read timeout that is not yet the deadline (`TimedOut`).
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    continue
                }
                Err(_) => return false,
            };
            match message {
                Message::Text(text) if text.as_str() == "2probe" => {
                    if ws.send(Message::text("3probe")).is_err() {
                        return false;
                    }
                    poll.state().upgrading = true;
                    let _ = poll.release.0.try_send(Release::Noop);
                }
                Message::Text(text) if text.as_str() == "5" => return poll.state().upgrading,
                Message::Ping(_) | Message::Pong(_) => {}
                _ => return false,
            }
        }
    }

    /// Ends a session: the client leaves its room, a held GET is released
    /// (`release`), and the `sid` is forgotten.
    fn end(&self, poll: &Poll, why: &str, release: Release) {
        self.sessions().remove(&poll.sid);
        let client = poll.state().client.take();
        if let Some(client) = client {
            info!("client {} polling session ended: {why}", client.id());
            let _ = poll.release.0.try_send(release);
        }
    }

    /// The timer: pings every session on time, ends the silent ones and
    /// those whose queue overflowed, and forgets upgraded sessions whose
    /// WebSocket has ended. Runs until the server stops.
    pub(crate) fn run_timer(self: Arc<Self>) {
        let config = &self.shared.config;
        while self.shared.pause(TICK) {
            let polls: Vec<Arc<Poll>> = self.sessions().values().cloned().collect();
            let now = Instant::now();
            for poll in polls {
                // A session whose lock is held is answering a request now
                // (a POST may wait seconds on a cluster's Redis): it is not
                // silent, and its ping can wait a tick. The timer never
                // waits for one session: every other session's ping and
                // timeout stay on time.
                let Some(mut state) = poll.try_state() else {
                    continue;
                };
                if state.upgraded {
                    // Only this entry still holds the queue: the client is gone.
                    if Arc::strong_count(&poll.outbox) == 1 {
                        self.sessions().remove(&poll.sid);
                    }
                    continue;
                }
                if state.client.is_none() {
                    continue;
                }
                // v3: a session that never authenticated, or whose token
                // expired, gets its error (and `41`) and then the close
                // packet; it ends once a GET has carried them.
                let session = &mut state.client.as_mut().expect("checked above").session;
                if session.alarm().is_some_and(|alarm| now >= alarm)
                    && session.on_alarm(now).is_some()
                {
                    session.flush();
                    poll.outbox.control(Outbound::Close(Box::default()));
                    state.closing = true;
                }
                let why = if poll.outbox.overflowed() {
                    Some("slow consumer")
                } else if self.silent(&state) {
                    Some("silent past the ping timeout")
                } else if state.closing && poll.outbox.drained() {
                    Some("closed by the server")
                } else {
                    None
                };
                if now >= state.next_ping {
                    state.next_ping = now + config.ping_interval;
                    poll.outbox.control(Outbound::Ping);
                }
                drop(state);
                if let Some(why) = why {
                    self.end(&poll, why, Release::Close);
                }
            }
        }
        // Shutdown: every session ends.
        let polls: Vec<Arc<Poll>> = self.sessions().values().cloned().collect();
        for poll in polls {
            self.end(&poll, "server shutting down", Release::Close);
        }
    }
}

impl Poll {
    fn state(&self) -> MutexGuard<'_, PollState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state, unless another thread holds it right now.
    fn try_state(&self) -> Option<MutexGuard<'_, PollState>> {
        match self.state.try_lock() {
            Ok(state) => Some(state),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn get(&self) -> MutexGuard<'_, Get> {
        self.get.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Appends one queued item to a payload, as its Engine.IO packet; false
/// if it is none.
fn append(payload: &mut Vec<u8>, item: &Outbound) -> bool {
    let packet: &[u8] = match item {
        Outbound::Event(event) => frame::payload(event.frame(Encoding::EngineIo)),
        Outbound::Packet(text) => text.as_bytes(),
        Outbound::Ping => engineio::PING.as_bytes(),
        Outbound::Close(_) => b"1",
        // WebSocket frames of the reader's own (Pong, Close replies): none
        // while a client polls.
        Outbound::Raw(_) => return false,
    };
    if !payload.is_empty() {
        payload.push(SEPARATOR as u8);
    }
    payload.extend_from_slice(packet);
    true
}

/// A payload answer, as engine.io sends it.
fn packets(payload: Vec<u8>) -> Answer {
    answer(200, "text/plain; charset=UTF-8", payload)
}
