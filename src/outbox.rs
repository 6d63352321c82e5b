//! A client's outbound queue and its writer. Only the writer writes to the
//! socket; everything else (broadcasts, replies, the reader's Pong and
//! Close answers) reaches the socket through this queue, so frames never
//! interleave and a client that stops reading only fills its own queue.
//!
//! The writer is a role claimed with one atomic flag: the push that finds
//! it free claims it, and once every lock is released a writer thread is
//! started for the claim. The thread drains everything queued into one
//! vectored write, lingers a little for more, then gives the role back and
//! ends, so an idle client costs no writer thread.
//!
//! Everything queued counts toward the bounds, control frames included (a
//! peer that sends Pings and never reads the Pongs fills its queue like any
//! other), except the final Close. A long-polling client has no socket
//! until it upgrades: its held GET takes what is queued (`take`).

use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::warn;

use crate::codec::{engineio, frame, Encoding, Outgoing};
use crate::metrics::Metrics;
use crate::rooms::{Mailbox, Overflow};

/// A client whose queue holds more than this many bytes is a slow consumer.
pub(crate) const MAX_QUEUED_BYTES: usize = 1 << 20;
/// A client whose queue holds more than this many frames is a slow consumer.
pub(crate) const MAX_QUEUED_FRAMES: usize = 4096;
/// At most this many frames go into one vectored write (Linux's IOV_MAX is 1024).
const MAX_BATCH: usize = 512;
/// A writer takes items off the queue until it holds this many bytes (or
/// one item, however large). What it took no longer counts toward the
/// queue's bounds, so a client holds at most the bounds plus one batch.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// A writer thread waits this long for more before it ends; a busy client
/// keeps its writer, an idle one gives the thread back.
const WRITER_LINGER: Duration = Duration::from_secs(2);
/// Stack for a writer thread: it only drains a channel and encodes frames.
const WRITER_STACK: usize = 128 * 1024;

/// What a writer can be asked to write.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A chat protocol event (counted in the queue bounds and in `frames_sent`).
    Event(Arc<Outgoing>),
    /// An Engine.IO packet outside the chat protocol (open, `40`, pong), as text.
    Packet(Box<str>),
    /// A frame tungstenite built: the reader's Pong and Close replies.
    Raw(Box<[u8]>),
    /// A heartbeat: a WebSocket Ping, or Engine.IO's ping packet.
    Ping,
    /// A Close frame (see [`frame::close`]); the writer stops after it.
    Close(Box<[u8]>),
}

impl Outbound {
    /// What the item costs in the queue's byte bound.
    fn weight(&self) -> usize {
        match self {
            Outbound::Event(event) => event.weight(),
            Outbound::Packet(text) => text.len() + 8,
            Outbound::Raw(bytes) | Outbound::Close(bytes) => bytes.len(),
            Outbound::Ping => 8,
        }
    }
}

/// What a long-polling GET found.
pub(crate) enum Taken<T> {
    Item(Outbound),
    Other(T),
    Nothing,
}

/// A client's queue, and the socket its writer writes to.
pub(crate) struct Outbox {
    tx: Sender<Outbound>,
    queue: Arc<Queue>,
}

/// The part of an outbox its writer thread shares. The thread sees the
/// client gone (the channel disconnected) once the `Outbox` is dropped.
struct Queue {
    rx: Receiver<Outbound>,
    bytes: AtomicUsize,
    frames: AtomicUsize,
    /// The queue went past its bounds: the client is being cut off.
    overflowed: AtomicBool,
    /// The overflow still needs handling outside the lock (see `wake`).
    overflow_pending: AtomicBool,
    /// The writer role: true while a writer thread runs or has been claimed.
    writer: AtomicBool,
    /// A push claimed the writer role; `wake` starts the thread.
    start_pending: AtomicBool,
    /// The socket the writer writes to; none while a client long-polls.
    socket: OnceLock<Arc<TcpStream>>,
    /// Writer threads running (0 or 1), and a signal when one ends.
    running: Mutex<usize>,
    writer_ended: Condvar,
    encoding: Encoding,
    metrics: Arc<Metrics>,
}

impl Outbox {
    /// A queue for the client on `socket` (none for a long-polling client),
    /// written in `encoding`.
    pub(crate) fn new(
        socket: Option<Arc<TcpStream>>,
        encoding: Encoding,
        metrics: Arc<Metrics>,
    ) -> Outbox {
        let (tx, rx) = crossbeam_channel::unbounded();
        let queue = Queue {
            rx,
            bytes: AtomicUsize::new(0),
            frames: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            overflow_pending: AtomicBool::new(false),
            writer: AtomicBool::new(false),
            start_pending: AtomicBool::new(false),
            socket: socket.map(OnceLock::from).unwrap_or_default(),
            running: Mutex::new(0),
            writer_ended: Condvar::new(),
            encoding,
            metrics,
        };
        Outbox {
            tx,
            queue: Arc::new(queue),
        }
    }

    /// Queues an event for this client alone and wakes the writer (for
    /// callers holding no lock). A slow consumer is already being cut off.
    pub(crate) fn push_now(&self, event: &Arc<Outgoing>) {
        let _ = self.push(event);
        self.wake();
    }

    /// Queues a transport message (a Pong, a ping, an Engine.IO packet, a
    /// Close) and wakes the writer; for callers holding no lock.
    pub(crate) fn control(&self, item: Outbound) {
        let _ = self.enqueue(item);
        self.wake();
    }

    /// Whether the queue went past its bounds (the client is being cut off).
    pub(crate) fn overflowed(&self) -> bool {
        self.queue.overflowed.load(Relaxed)
    }

    /// Queues `item` within the bounds (a Close always gets in). Past them
    /// the item is dropped, the queue marked overflowed (for `wake` to
    /// handle) and `Overflow` returned. Ok(true) when this claimed the
    /// writer role, for `wake` to start the writer.
    fn enqueue(&self, item: Outbound) -> Result<bool, Overflow> {
        let q = &self.queue;
        if !matches!(item, Outbound::Close(_)) {
            if q.overflowed.load(Relaxed) {
                return Err(Overflow);
            }
            let weight = item.weight();
            let frames = q.frames.fetch_add(1, Relaxed) + 1;
            let bytes = q.bytes.fetch_add(weight, Relaxed) + weight;
            // One item gets into an empty queue whatever its size: a
            // `joined` for a big room is not a sign of a slow reader.
            let over = frames > MAX_QUEUED_FRAMES || bytes > MAX_QUEUED_BYTES;
            if over && frames > 1 {
                q.frames.fetch_sub(1, Relaxed);
                q.bytes.fetch_sub(weight, Relaxed);
                if !q.overflowed.swap(true, Relaxed) {
                    q.overflow_pending.store(true, SeqCst);
                }
                return Err(Overflow);
            }
        }
        // A send fails only once the writer ended with its client.
        if self.tx.send(item).is_err() {
            return Ok(false);
        }
        // Queue first, then claim: a writer about to end checks the queue
        // after giving up its claim, so one of the two sees the item. A
        // long-polling client has no writer: its GET takes the queue.
        if q.socket.get().is_none() || q.writer.swap(true, SeqCst) {
            return Ok(false);
        }
        q.start_pending.store(true, SeqCst);
        Ok(true)
    }

    fn start_writer(&self) {
        let queue = Arc::clone(&self.queue);
        *queue.lock_running() += 1;
        let spawned = thread::Builder::new()
            .name("writer".into())
            .stack_size(WRITER_STACK)
            .spawn(move || {
                run_writer(&queue);
                *queue.lock_running() -= 1;
                queue.writer_ended.notify_all();
            });
        if let Err(e) = spawned {
            *self.queue.lock_running() -= 1;
            // Without a writer the client would wait forever: end it instead.
            warn!("cannot start a writer thread: {e}; dropping the client");
            self.abort();
        }
    }

    /// Waits until no writer thread runs, or `timeout` passes. A reader
    /// waits for its writer before it gives up its socket's place, so a
    /// writer blocked on a peer that reads nothing is still counted.
    pub(crate) fn wait_for_writer(&self, timeout: Duration) {
        let running = self.queue.lock_running();
        let _ = self
            .queue
            .writer_ended
            .wait_timeout_while(running, timeout, |n| *n > 0);
    }

    /// A long-polling client moved to a WebSocket: from now on a writer
    /// writes to `socket`. One is started at once for anything queued.
    pub(crate) fn attach(&self, socket: Arc<TcpStream>) {
        let q = &self.queue;
        if q.socket.set(socket).is_ok() && !q.writer.swap(true, SeqCst) {
            self.start_writer();
        }
    }

    /// For a long-polling GET: the next queued item, or a message on
    /// `other`, whichever comes first within `timeout`. What it returns
    /// counts as sent.
    pub(crate) fn take_or<T>(&self, other: &Receiver<T>, timeout: Duration) -> Taken<T> {
        crossbeam_channel::select! {
            recv(self.queue.rx) -> item => match item {
                Ok(item) => {
                    self.queue.release(std::slice::from_ref(&item));
                    self.queue.sent(std::slice::from_ref(&item));
                    Taken::Item(item)
                }
                Err(_) => Taken::Nothing,
            },
            recv(other) -> message => message.map_or(Taken::Nothing, Taken::Other),
            default(timeout) => Taken::Nothing,
        }
    }

    /// For a long-polling GET: the next item if one is queued.
    pub(crate) fn try_take(&self) -> Option<Outbound> {
        let item = self.queue.rx.try_recv().ok()?;
        self.queue.release(std::slice::from_ref(&item));
        self.queue.sent(std::slice::from_ref(&item));
        Some(item)
    }
}

impl Mailbox for Outbox {
    fn push(&self, event: &Arc<Outgoing>) -> Result<bool, Overflow> {
        self.enqueue(Outbound::Event(Arc::clone(event)))
    }

    fn wake(&self) {
        let q = &self.queue;
        if q.overflow_pending.swap(false, SeqCst) {
            let (frames, bytes) = (q.frames.load(Relaxed), q.bytes.load(Relaxed));
            warn!("a client is a slow consumer ({frames} frames, {bytes} bytes queued); disconnecting it");
            q.metrics.slow_consumer_disconnect();
            // Wakes the reader's blocking read, which then ends the connection.
            if let Some(socket) = q.socket.get() {
                let _ = socket.shutdown(Shutdown::Read);
            }
        }
        if q.start_pending.swap(false, SeqCst) {
            self.start_writer();
        }
    }

    fn close(&self, code: u16, reason: &str) {
        self.control(Outbound::Close(frame::close(code, reason)));
    }

    fn abort(&self) {
        if let Some(socket) = self.queue.socket.get() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// The writer thread: drains the queue batch by batch until it stays empty
/// for `WRITER_LINGER`, a Close is written, the write fails, or the client
/// is gone. Only the first of these gives the role back; after the others
/// nothing more may be written, so no writer is started again.
fn run_writer(queue: &Queue) {
    let socket = queue
        .socket
        .get()
        .expect("a writer starts only with a socket");
    let mut batch = Batch::default();
    loop {
        match queue.next_batch(&mut batch) {
            Next::Batch => {}
            Next::Idle => return,
            Next::Gone => break,
        }
        if queue.overflowed.load(Relaxed) {
            let _ = (&**socket).write_all(&frame::close(1013, "slow consumer"));
            break;
        }
        let written = batch.write(socket, queue.encoding);
        queue.sent(&batch.items);
        batch.clear();
        match written {
            Ok(Written::All) => {}
            Ok(Written::Close) => {
                // Half-close: the peer sees our FIN after the Close frame;
                // the reader still takes the peer's Close reply.
                let _ = socket.shutdown(Shutdown::Write);
                return;
            }
            Err(_) => break,
        }
    }
    // Wake the reader if it is still blocked (a write error, a slow consumer).
    let _ = socket.shutdown(Shutdown::Both);
}

/// What the writer found waiting.
enum Next {
    /// A batch to write.
    Batch,
    /// Nothing for a while: the role was given back.
    Idle,
    /// The client is gone.
    Gone,
}

impl Queue {
    fn lock_running(&self) -> std::sync::MutexGuard<'_, usize> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `WRITER_LINGER` for the first item, then takes whatever
    /// else is queued, up to `MAX_BATCH` items and `MAX_BATCH_BYTES`.
    fn next_batch(&self, batch: &mut Batch) -> Next {
        let mut bytes = loop {
            match self.rx.recv_timeout(WRITER_LINGER) {
                Ok(first) => {
                    let bytes = first.weight();
                    batch.items.push(first);
                    break bytes;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.give_back_role() {
                        return Next::Idle;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Next::Gone,
            }
        };
        while batch.items.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(item) => {
                    bytes += item.weight();
                    batch.items.push(item);
                }
                Err(_) => break,
            }
        }
        self.release(&batch.items);
        Next::Batch
    }

    /// Gives the writer role up. False if something was queued meanwhile
    /// by a pusher who saw the role still taken: then the role is taken
    /// back and the writer goes on (unless a pusher took it first and is
    /// starting a new writer).
    fn give_back_role(&self) -> bool {
        self.writer.store(false, SeqCst);
        self.rx.is_empty() || self.writer.swap(true, SeqCst)
    }

    /// Takes items off the queue's bounds: a writer has them now.
    fn release(&self, items: &[Outbound]) {
        let counted = items.iter().filter(|i| !matches!(i, Outbound::Close(_)));
        let (frames, bytes) = counted.fold((0, 0), |(n, b), i| (n + 1, b + i.weight()));
        self.frames.fetch_sub(frames, Relaxed);
        self.bytes.fetch_sub(bytes, Relaxed);
    }

    /// Counts the chat events among written items sent (nothing after a
    /// Close is written).
    fn sent(&self, items: &[Outbound]) {
        let events = items
            .iter()
            .take_while(|i| !matches!(i, Outbound::Close(_)))
            .filter(|i| matches!(i, Outbound::Event(_)))
            .count();
        self.metrics.add_frames_sent(events as u64);
    }
}

/// Items taken off the queue for one vectored write.
#[derive(Default)]
struct Batch {
    items: Vec<Outbound>,
    /// Engine.IO packets framed for this write.
    framed: Vec<Box<[u8]>>,
}

/// How a batch's write ended.
enum Written {
    All,
    /// A Close frame was written; nothing may follow it.
    Close,
}

impl Batch {
    /// Writes the batch (up to and including a Close) in one vectored write.
    fn write(&mut self, socket: &TcpStream, encoding: Encoding) -> io::Result<Written> {
        self.framed = self
            .items
            .iter()
            .filter_map(|item| match item {
                Outbound::Packet(text) => Some(frame::text(text.as_bytes())),
                _ => None,
            })
            .collect();
        let mut framed = self.framed.iter();
        let mut slices = Vec::with_capacity(self.items.len());
        let mut closing = false;
        for item in &self.items {
            let bytes: &[u8] = match item {
                Outbound::Event(event) => event.frame(encoding),
                Outbound::Packet(_) => framed.next().expect("framed above"),
                Outbound::Raw(bytes) => bytes,
                Outbound::Ping => ping(encoding),
                Outbound::Close(close) => {
                    closing = true;
                    close
                }
            };
            slices.push(IoSlice::new(bytes));
            if closing {
                break;
            }
        }
        write_all_vectored(socket, &mut slices)?;
        Ok(if closing {
            Written::Close
        } else {
            Written::All
        })
    }

    fn clear(&mut self) {
        self.items.clear();
        self.framed.clear();
    }
}

/// A heartbeat in `encoding`: a WebSocket Ping, or Engine.IO's ping packet.
fn ping(encoding: Encoding) -> &'static [u8] {
    const ENGINE_IO_PING: &[u8] = &[0x81, 0x01, engineio::PING.as_bytes()[0]];
    match encoding {
        Encoding::Native => frame::PING,
        Encoding::EngineIo => ENGINE_IO_PING,
    }
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
