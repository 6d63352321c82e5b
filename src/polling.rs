//! Engine.IO 4 long-polling on the HTTP port, so that a Socket.IO page
//! calling `io()` with default options works unchanged. A long-polling
//! client is a client like any other (the same `Client`: session, codec,
//! bounded queue, admission); what differs is only how bytes move:
//!
//! - `GET ?EIO=4&transport=polling` opens a session: the open packet, with
//!   an unguessable `sid`.
//! - `GET …&sid=` is held until something is queued for the client (at the
//!   latest the next ping), then answers with everything queued, packets
//!   joined by `\x1e`. The GET is the client's writer: no thread waits for
//!   an idle polling client between its requests.
//! - `POST …&sid=` carries packets from the client, decoded and handled by
//!   the same codec and session as over WebSocket.
//! - A WebSocket with `sid=` upgrades the session (`2probe`, `3probe`, `5`):
//!   the queue is handed to a WebSocket writer, so no frame is lost or
//!   repeated across the upgrade.
//!
//! One timer thread sends every session its pings and drops the sessions
//! that went silent past the ping interval plus the ping timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, info};
use tungstenite::Message;

use crate::accept::{answer_deadline, switch_protocols, Refusal};
use crate::codec::{engineio, frame, Encoding};
use crate::connection;
use crate::httpconn::{answer, header, plain, Answer, Body, Conn, Head};
use crate::outbox::{Outbound, Outbox};
use crate::session::{Client, Flow};
use crate::shared::Shared;

/// How often the timer looks at the sessions.
const TICK: Duration = Duration::from_millis(250);
/// How long an upgrading client has to finish its probe (engine.io's default).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Packets in one payload are separated by this byte (Engine.IO 4).
const SEPARATOR: u8 = 0x1e;

/// The long-polling sessions, by `sid`.
pub(crate) struct Polling {
    sessions: Mutex<HashMap<String, Arc<Poll>>>,
    shared: Arc<Shared>,
}

/// One long-polling session.
struct Poll {
    sid: String,
    outbox: Arc<Outbox>,
    state: Mutex<State>,
    /// A GET is being held: a second one at once is refused.
    polling: AtomicBool,
}

struct State {
    /// The client, until it upgrades or the session ends.
    client: Option<Client>,
    /// When a packet last came from the client.
    heard: Instant,
    next_ping: Instant,
    /// A WebSocket is probing to take the session over.
    upgrading: bool,
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

    fn find(&self, sid: &str) -> Option<Arc<Poll>> {
        self.sessions().get(sid).cloned()
    }

    /// A long-polling request on `conn`. False when the connection ends.
    pub(crate) fn serve(&self, conn: &mut Conn, head: &Head) -> bool {
        let shared = &self.shared;
        let origin = head.header("Origin");
        let (answer, keep) = match self.answer(conn, head) {
            Ok(answer) => answer,
            Err(refusal) => (refusal.into_answer(), head.body() == Body::None),
        };
        let mut answer = answer.with_header(header("Vary", "Origin"));
        if let Some(origin) = origin.filter(|o| shared.handshake_origins.allows(o)) {
            answer.add_header(header("Access-Control-Allow-Origin", origin));
            answer.add_header(header("Access-Control-Allow-Credentials", "true"));
        }
        let keep = keep && head.keep_alive() && !shared.stopping();
        let sent = conn.send(answer, head.version(), false, answer_deadline(shared));
        if sent.is_err() || !keep {
            conn.close();
            return false;
        }
        true
    }

    /// Checks a request as engine.io does (origin, version, method, sid)
    /// and answers it; the bool says whether the connection may go on.
    fn answer(&self, conn: &mut Conn, head: &Head) -> Result<(Answer, bool), Refusal> {
        if let Some(origin) = head.header("Origin") {
            if !self.shared.handshake_origins.allows(origin) {
                return Err(Refusal::engine_io(4, "Forbidden"));
            }
        }
        if head.param("EIO") != Some("4") {
            return Err(Refusal::engine_io(5, "Unsupported protocol version"));
        }
        let Some(sid) = head.param("sid") else {
            if head.method != "GET" {
                return Err(Refusal::engine_io(2, "Bad handshake method"));
            }
            return Ok((self.open(), true));
        };
        let poll = self
            .find(sid)
            .ok_or(Refusal::engine_io(1, "Session ID unknown"))?;
        match head.method.as_str() {
            "GET" => Ok((self.poll(&poll)?, true)),
            "POST" => self.post(conn, head, &poll),
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
        let Some(client) = Client::register(Encoding::EngineIo, None, admission, shared) else {
            return plain(503, "server is shutting down");
        };
        let sid = engineio::new_sid();
        let config = &shared.config;
        let open = engineio::open_packet(
            &sid,
            &["websocket"],
            config.ping_interval,
            config.idle_timeout,
            config.max_message_bytes,
        );
        let now = Instant::now();
        let poll = Arc::new(Poll {
            sid: sid.clone(),
            outbox: Arc::clone(&client.outbox),
            state: Mutex::new(State {
                client: Some(client),
                heard: now,
                next_ping: now + config.ping_interval,
                upgrading: false,
            }),
            polling: AtomicBool::new(false),
        });
        self.sessions().insert(sid, poll);
        packets(open.into_bytes())
    }

    /// A held GET: waits for what is queued (the next ping at the latest)
    /// and answers with all of it.
    fn poll(&self, poll: &Poll) -> Result<Answer, Refusal> {
        if poll.state().client.is_none() {
            // Upgraded: this session's packets go over its WebSocket now.
            return Err(Refusal::engine_io(3, "Bad request"));
        }
        if poll.polling.swap(true, Ordering::SeqCst) {
            // Two GETs at once: engine.io ends such a session.
            self.end(poll, "overlapping polls");
            return Err(Refusal::engine_io(3, "Bad request"));
        }
        let wait = self.shared.config.ping_interval + TICK * 4;
        let mut payload = Vec::new();
        if let Some(first) = poll.outbox.take(wait) {
            let mut item = Some(first);
            while let Some(next) = item {
                let closing = matches!(next, Outbound::Close(_));
                append(&mut payload, &next);
                if closing {
                    break;
                }
                item = poll.outbox.try_take();
            }
        }
        if payload.is_empty() {
            payload.push(b'6'); // noop: nothing came, the client polls again
        }
        poll.polling.store(false, Ordering::SeqCst);
        Ok(packets(payload))
    }

    /// A POST: the client's packets, decoded and handled in order.
    fn post(&self, conn: &mut Conn, head: &Head, poll: &Poll) -> Result<(Answer, bool), Refusal> {
        let max = self.shared.config.max_message_bytes;
        let len = match head.body() {
            Body::None => 0,
            Body::Length(len) if len <= max as u64 => len as usize,
            // Unread, the body ends the connection after the answer.
            Body::Length(_) => return Ok((plain(413, "payload too large"), false)),
            Body::Unknown => return Ok((plain(411, "a Content-Length is required"), false)),
        };
        if head.has_token("Expect", "100-continue") {
            use std::io::Write;
            let _ = (&*conn.socket).write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let deadline = Instant::now() + self.shared.config.handshake_timeout;
        let Ok(body) = conn.read_body(len, deadline) else {
            return Ok((plain(400, "body not received in time"), false));
        };
        let Ok(body) = std::str::from_utf8(&body) else {
            self.end(poll, "a payload that is not text");
            return Err(Refusal::engine_io(3, "Bad request"));
        };
        let mut state = poll.state();
        state.heard = Instant::now();
        let Some(client) = state.client.as_mut() else {
            return Err(Refusal::engine_io(3, "Bad request"));
        };
        let mut ended = false;
        for packet in body.split(char::from(SEPARATOR)) {
            let inbound = client.codec.decode(packet);
            if client.session.handle(inbound) == Flow::End {
                ended = true;
                break;
            }
        }
        drop(state);
        if ended {
            self.end(poll, "the client closed it");
        }
        Ok((answer(200, "text/html", b"ok".to_vec()), true))
    }

    /// A WebSocket taking over session `sid`: answers the probe, and on the
    /// client's `5` hands it the queue and becomes the client's reader.
    pub(crate) fn upgrade(&self, mut conn: Conn, sid: &str, accept_key: &str, deadline: Instant) {
        let shared = &self.shared;
        let Some(poll) = self.find(sid) else {
            let refusal = Refusal::engine_io(1, "Session ID unknown");
            return refusal.send(&mut conn, answer_deadline(shared));
        };
        {
            let mut state = poll.state();
            if state.client.is_none() || state.upgrading {
                drop(state);
                let refusal = Refusal::engine_io(3, "Bad request");
                return refusal.send(&mut conn, answer_deadline(shared));
            }
            state.upgrading = true;
        }
        if switch_protocols(&conn, accept_key, deadline).is_err() {
            poll.state().upgrading = false;
            return;
        }
        let socket = Arc::clone(&conn.socket);
        let mut ws = connection::websocket(Arc::clone(&socket), conn.pending, None, shared);
        ws.get_mut().set_deadline(Instant::now() + UPGRADE_TIMEOUT);
        let upgraded = self.probe(&mut ws, &poll);
        if !upgraded {
            poll.state().upgrading = false;
            return debug!("session {sid}: upgrade probe failed");
        }
        let Some(client) = poll.state().client.take() else {
            return;
        };
        self.sessions().remove(&poll.sid);
        info!("client {} upgraded to WebSocket", client.id());
        // From here the queue is written to this socket, by a writer.
        poll.outbox.attach(socket);
        let stream = ws.get_mut();
        stream.queue_to(Arc::clone(&poll.outbox));
        stream.set_deadline(Instant::now() + shared.config.idle_timeout);
        connection::run(client, ws);
    }

    /// The probe: `2probe` is answered `3probe` (directly: the socket has
    /// no writer yet), and a held GET is released with a noop so that the
    /// client can pause polling; true once the client sends `5`.
    fn probe(&self, ws: &mut connection::Socket, poll: &Poll) -> bool {
        while let Ok(message) = connection::next_message(ws, &poll.sid) {
            match message {
                Message::Text(text) if text.as_str() == "2probe" => {
                    if ws.send(Message::text("3probe")).is_err() {
                        return false;
                    }
                    poll.outbox.control(Outbound::Packet("6".into()));
                }
                Message::Text(text) if text.as_str() == "5" => return true,
                Message::Ping(_) | Message::Pong(_) => {}
                _ => return false,
            }
        }
        false
    }

    /// Ends a session: the client leaves its room, a held GET gets the
    /// close packet, and the `sid` is forgotten.
    fn end(&self, poll: &Poll, why: &str) {
        self.sessions().remove(&poll.sid);
        let client = poll.state().client.take();
        if let Some(client) = client {
            info!("client {} polling session ended: {why}", client.id());
            poll.outbox
                .control(Outbound::Close(frame::close(1000, why)));
        }
    }

    /// The timer: pings every session on time, ends the silent ones and
    /// those whose queue overflowed. Runs until the server stops.
    pub(crate) fn run_timer(self: Arc<Self>) {
        let config = &self.shared.config;
        while self.shared.pause(TICK) {
            let polls: Vec<Arc<Poll>> = self.sessions().values().cloned().collect();
            let now = Instant::now();
            for poll in polls {
                let mut state = poll.state();
                if state.client.is_none() || state.upgrading {
                    continue;
                }
                let why = if poll.outbox.overflowed() {
                    Some("slow consumer")
                } else if now >= state.heard + config.idle_timeout {
                    Some("silent past the ping timeout")
                } else {
                    None
                };
                if now >= state.next_ping {
                    state.next_ping = now + config.ping_interval;
                    poll.outbox.control(Outbound::Ping);
                }
                drop(state);
                if let Some(why) = why {
                    self.end(&poll, why);
                }
            }
        }
        // Shutdown: every session ends (the registry closes their queues).
        let polls: Vec<Arc<Poll>> = self.sessions().drain().map(|(_, p)| p).collect();
        for poll in polls {
            poll.state().client.take();
        }
    }
}

impl Poll {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Appends one queued item to a payload, as its Engine.IO packet.
fn append(payload: &mut Vec<u8>, item: &Outbound) {
    let packet: &[u8] = match item {
        Outbound::Event(event) => frame::payload(event.frame(Encoding::EngineIo)),
        Outbound::Packet(text) => text.as_bytes(),
        Outbound::Ping => engineio::PING.as_bytes(),
        Outbound::Close(_) => b"1",
        // WebSocket frames of the reader's own (Pong, Close replies): none
        // while a client polls.
        Outbound::Raw(_) => return,
    };
    if !payload.is_empty() {
        payload.push(SEPARATOR);
    }
    payload.extend_from_slice(packet);
}

/// A payload answer, as engine.io sends it.
fn packets(payload: Vec<u8>) -> Answer {
    answer(200, "text/plain; charset=UTF-8", payload)
}
