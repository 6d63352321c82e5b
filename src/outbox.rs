//! A client's outbound queue and the writer thread that drains it. Only the
//! writer writes to the socket; everything else (broadcasts, replies, the
//! reader's Pong and Close answers) reaches the socket through this queue.

use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::warn;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::metrics::Metrics;

/// A client whose queue holds more than this many bytes is a slow consumer.
pub const MAX_QUEUED_BYTES: usize = 1 << 20;
/// A client whose queue holds more than this many frames is a slow consumer.
pub const MAX_QUEUED_FRAMES: usize = 4096;
/// At most this many frames go into one vectored write (Linux's IOV_MAX is 1024).
const MAX_BATCH: usize = 512;
/// A writer thread waits this long for more before it ends; a busy client
/// keeps its writer, an idle one gives the thread back.
const WRITER_LINGER: Duration = Duration::from_secs(2);
/// Stack for a writer thread: it only drains a channel and encodes frames.
const WRITER_STACK: usize = 128 * 1024;

/// The protocol a client speaks; the writer encodes each event for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `{"event": …, "data": …}` text frames.
    Native,
    /// Engine.IO 4 / Socket.IO 4 packets (see `socketio.rs`).
    SocketIo,
}

/// One server event: a name and its data, plus the `ack` it answers.
/// Built once, shared by every recipient; each transport's wire bytes are
/// encoded by the first writer that needs them and then reused.
#[derive(Debug)]
pub struct Outgoing {
    pub name: &'static str,
    pub data: Box<RawValue>,
    pub ack: Option<u64>,
    native: OnceLock<Box<[u8]>>,
    socketio: OnceLock<Box<[u8]>>,
}

impl Outgoing {
    pub fn new<T: Serialize>(name: &'static str, data: &T, ack: Option<u64>) -> Arc<Outgoing> {
        let data = serde_json::value::to_raw_value(data)
            .expect("event data is plain JSON and always serializes");
        Arc::new(Outgoing {
            name,
            data,
            ack,
            native: OnceLock::new(),
            socketio: OnceLock::new(),
        })
    }

    /// The complete WebSocket frame for `transport`.
    pub fn frame(&self, transport: Transport) -> &[u8] {
        match transport {
            Transport::Native => self.native.get_or_init(|| {
                let mut json = format!(r#"{{"event":"{}""#, self.name);
                if let Some(ack) = self.ack {
                    json.push_str(&format!(r#","ack":{ack}"#));
                }
                json.push_str(r#","data":"#);
                json.push_str(self.data.get());
                json.push('}');
                text_frame(json.as_bytes())
            }),
            Transport::SocketIo => self
                .socketio
                .get_or_init(|| text_frame(crate::socketio::encode_event(self).as_bytes())),
        }
    }

    /// A rough size for queue accounting, known before encoding.
    fn weight(&self) -> usize {
        self.data.get().len() + 48
    }
}

/// What a writer can be asked to write.
#[derive(Debug)]
pub enum Outbound {
    /// A protocol event (counted in the queue bounds and in `frames_sent`).
    Event(Arc<Outgoing>),
    /// Bytes already framed by tungstenite: the reader's Pong and Close replies.
    Raw(Box<[u8]>),
    /// A heartbeat: a WebSocket Ping, or Engine.IO's ping packet `2`.
    Ping,
    /// A framed Close (see [`Outbound::close`]); the writer stops after it.
    Close(Box<[u8]>),
}

impl Outbound {
    /// A Close frame with this status code and reason.
    pub fn close(code: u16, reason: &str) -> Outbound {
        Outbound::Close(close_frame(code, reason).into_boxed_slice())
    }
}

/// The sending side of a client's queue. Cheap to clone; the room registry
/// keeps one per member.
///
/// The writer thread exists only while there is something to write: it
/// lingers a little after the queue empties, then ends, and the next push
/// starts a new one. An idle client therefore costs one thread, its reader.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: Sender<Outbound>,
    queue: Arc<QueueState>,
}

#[derive(Debug)]
struct QueueState {
    rx: Receiver<Outbound>,
    bytes: AtomicUsize,
    frames: AtomicUsize,
    overflowed: AtomicBool,
    /// True while a writer thread runs, or has been promised by a push.
    writer: AtomicBool,
    socket: Arc<TcpStream>,
    transport: Transport,
    metrics: Arc<Metrics>,
}

/// A writer thread that a push found missing. Start it with
/// [`WriterStart::start`] once no lock is held: spawning a thread is a
/// syscall or two, not something to do under the registry's mutex.
#[must_use = "the queued frames wait until the writer is started"]
#[derive(Debug)]
pub struct WriterStart(Arc<QueueState>);

impl WriterStart {
    pub fn start(self) {
        let queue = Arc::clone(&self.0);
        let spawned = thread::Builder::new()
            .name("writer".into())
            .stack_size(WRITER_STACK)
            .spawn(move || run_writer(&queue));
        if let Err(e) = spawned {
            // Without a writer the client would wait forever: end it instead.
            warn!("cannot start a writer thread: {e}; dropping the client");
            let _ = self.0.socket.shutdown(Shutdown::Both);
        }
    }
}

/// The queue is past its bounds: the client is a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl Outbox {
    /// A queue for the client on `socket`, written in `transport`'s encoding.
    pub fn new(socket: Arc<TcpStream>, transport: Transport, metrics: Arc<Metrics>) -> Outbox {
        let (tx, rx) = crossbeam_channel::unbounded();
        let queue = QueueState {
            rx,
            bytes: AtomicUsize::new(0),
            frames: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            writer: AtomicBool::new(false),
            socket,
            transport,
            metrics,
        };
        Outbox {
            tx,
            queue: Arc::new(queue),
        }
    }

    /// A queue that never starts a writer, and its receiving end: for tests
    /// and fuzzing, which look at what was queued instead of the socket.
    #[doc(hidden)]
    pub fn detached(socket: Arc<TcpStream>, metrics: Arc<Metrics>) -> (Outbox, Receiver<Outbound>) {
        let outbox = Outbox::new(socket, Transport::Native, metrics);
        outbox.queue.writer.store(true, SeqCst);
        let rx = outbox.queue.rx.clone();
        (outbox, rx)
    }

    /// Queues an event; the caller starts the writer if one is returned.
    ///
    /// Past the bounds the event is dropped and `Overflow` returned: the
    /// reader is woken to end the connection, the writer sends Close 1013,
    /// and the caller must take the client out of its room.
    pub fn push(&self, event: &Arc<Outgoing>) -> Result<Option<WriterStart>, Overflow> {
        let q = &self.queue;
        if q.overflowed.load(Relaxed) {
            return Err(Overflow);
        }
        let weight = event.weight();
        let frames = q.frames.fetch_add(1, Relaxed) + 1;
        let bytes = q.bytes.fetch_add(weight, Relaxed) + weight;
        if frames > MAX_QUEUED_FRAMES || bytes > MAX_QUEUED_BYTES {
            q.frames.fetch_sub(1, Relaxed);
            q.bytes.fetch_sub(weight, Relaxed);
            if !q.overflowed.swap(true, Relaxed) {
                warn!("a client is a slow consumer ({frames} frames, {bytes} bytes queued); disconnecting it");
                q.metrics.slow_consumer_disconnect();
                // Wakes the reader's blocking read, which then ends the connection.
                let _ = q.socket.shutdown(Shutdown::Read);
            }
            return Err(Overflow);
        }
        Ok(self.send(Outbound::Event(Arc::clone(event))))
    }

    /// Queues an event for this client alone and starts the writer if needed
    /// (for callers holding no lock). A slow consumer is already being cut off.
    pub fn push_now(&self, event: &Arc<Outgoing>) {
        if let Ok(Some(writer)) = self.push(event) {
            writer.start();
        }
    }

    /// Queues bytes, a Ping or a Close, outside the slow-consumer bounds.
    pub fn control(&self, item: Outbound) {
        if let Some(writer) = self.send(item) {
            writer.start();
        }
    }

    fn send(&self, item: Outbound) -> Option<WriterStart> {
        // A send fails only once the channel is gone with its client.
        self.tx.send(item).ok()?;
        // Queue first, then claim: a writer that is about to end checks the
        // queue after giving up its claim, so one of the two sees the item.
        (!self.queue.writer.swap(true, SeqCst)).then(|| WriterStart(Arc::clone(&self.queue)))
    }

    /// Ends the connection now, from outside: wakes both the reader and a
    /// writer blocked on a full socket.
    pub fn abort(&self) {
        let _ = self.queue.socket.shutdown(Shutdown::Both);
    }
}

/// The writer: drains everything queued and writes it in one vectored write;
/// waits `WRITER_LINGER` for more, then ends. Also ends after a Close, on a
/// write error, or when the client is gone (every sender dropped); it does
/// not give up its claim then, so no writer is started again.
fn run_writer(queue: &QueueState) {
    let socket = &*queue.socket;
    let mut batch: Vec<Outbound> = Vec::with_capacity(16);
    loop {
        match queue.rx.recv_timeout(WRITER_LINGER) {
            Ok(first) => batch.push(first),
            Err(RecvTimeoutError::Timeout) => {
                queue.writer.store(false, SeqCst);
                // Something queued after our last look, by a pusher who saw
                // our claim still up? Take the claim back and go on, unless
                // a pusher took it first and is starting a new writer.
                if queue.rx.is_empty() || queue.writer.swap(true, SeqCst) {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while batch.len() < MAX_BATCH {
            match queue.rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        if queue.overflowed.load(Relaxed) {
            let _ = (&*socket).write_all(&close_frame(1013, "slow consumer"));
            break;
        }

        let (mut events, mut weight, mut closing) = (0, 0, false);
        let mut slices = Vec::with_capacity(batch.len());
        for item in &batch {
            match item {
                Outbound::Event(event) => {
                    events += 1;
                    weight += event.weight();
                    slices.push(IoSlice::new(event.frame(queue.transport)));
                }
                Outbound::Raw(bytes) => slices.push(IoSlice::new(bytes)),
                Outbound::Ping => slices.push(IoSlice::new(ping_frame(queue.transport))),
                Outbound::Close(frame) => {
                    slices.push(IoSlice::new(frame));
                    closing = true;
                    break;
                }
            }
        }
        let written = write_all_vectored(socket, &mut slices);
        drop(slices);
        batch.clear();
        queue.frames.fetch_sub(events, Relaxed);
        queue.bytes.fetch_sub(weight, Relaxed);
        queue.metrics.add_frames_sent(events as u64);
        if written.is_err() {
            break;
        }
        if closing {
            // Half-close: the peer sees our FIN after the Close frame; the
            // reader still takes the peer's Close reply.
            let _ = socket.shutdown(Shutdown::Write);
            return;
        }
    }
    // Wake the reader if it is still blocked (a write error, a slow consumer).
    let _ = socket.shutdown(Shutdown::Both);
}

fn write_all_vectored(mut socket: &TcpStream, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match socket.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A server-to-client WebSocket frame (FIN set, unmasked) around `payload`.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = Vec::with_capacity(len + 10);
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// A text frame.
pub fn text_frame(payload: &[u8]) -> Box<[u8]> {
    frame(0x1, payload).into_boxed_slice()
}

/// A Close frame with a status code and a short reason.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    frame(0x8, &payload)
}

/// A heartbeat: a WebSocket Ping, or Engine.IO's ping packet `2`.
fn ping_frame(transport: Transport) -> &'static [u8] {
    match transport {
        Transport::Native => &[0x89, 0x00],
        Transport::SocketIo => &[0x81, 0x01, b'2'],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths_use_the_three_encodings() {
        assert_eq!(&frame(0x1, b"hi")[..], &[0x81, 2, b'h', b'i']);
        let medium = frame(0x1, &[b'x'; 300]);
        assert_eq!(&medium[..4], &[0x81, 126, 1, 44]);
        let large = frame(0x1, &vec![b'x'; 70_000]);
        assert_eq!(&large[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(
            close_frame(1001, "bye"),
            vec![0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']
        );
    }

    #[test]
    fn native_encoding_puts_ack_beside_event_and_data() {
        let ev = Outgoing::new("ack", &serde_json::json!({"ok": true}), Some(7));
        let bytes = ev.frame(Transport::Native);
        assert_eq!(
            &bytes[2..],
            br#"{"event":"ack","ack":7,"data":{"ok":true}}"#
        );
    }
}
