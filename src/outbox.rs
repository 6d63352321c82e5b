//! A client's outbound queue and its writer. Only the writer writes to the
//! socket; everything else (broadcasts, replies, the reader's Pong and
//! Close answers) reaches the socket through this queue, so frames never
//! interleave and a client that stops reading only fills its own queue.
//!
//! The writer is a role claimed with one atomic flag, not a thread: the
//! push that finds it free claims it, and once every lock is released
//! (`Mailbox::wake`) the pushing thread writes everything queued itself,
//! with a send that never blocks. Only if the socket would block (the peer
//! reads slowly) does a writer thread take the role over, finish the write
//! with blocking sends, and give the role back when the queue is empty. So
//! a message reaches a reading client with no thread woken on its behalf,
//! and a slow one never holds up the sender.
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
use crate::delivery::{Mailbox, Overflow, Round};
use crate::metrics::Metrics;
use crate::throttle::Throttle;

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
/// A client written to more recently than this is busy: its writes are
/// left to a writer thread, which batches them, rather than made one by one.
const HOT_MICROS: u64 = 1000;
/// A writer thread waits this long for more before it gives the role back
/// and ends: a client that stays busy keeps its writer, one that calms
/// down is written to directly again. Twice `HOT_MICROS`, so a client is
/// not handed back and forth between the two at one steady rate. (It was
/// 100 ms: then the `userJoined` burst of a room filling up left every
/// member a writer thread for good, and a light load paid a thread
/// wake-up per recipient: p50 3.5 ms instead of 0.5-0.9 on 1 x 100 at
/// 100 msg/s, pinned.)
const WRITER_IDLE: Duration = Duration::from_micros(2 * HOT_MICROS);
/// A pushing thread writes to this many calm clients itself in one round
/// of wakes (about 1.5 ms of sends here); the rest of the round is left to
/// writer threads. One thread cannot send a big room's messages one by one
/// (1 x 1000 at 400 msg/s is 400,000 sends a second), but writer threads
/// that fall behind write many frames per send. A count, not a time: a
/// room of 100 is always written directly, however busy the machine.
const DIRECT_MAX: usize = 128;
/// After a round ran past `DIRECT_MAX` the server is busy, and for this long
/// writer threads do not end when idle: a big room's members keep theirs
/// from one message to the next instead of starting one each time.
const BUSY_MICROS: u64 = 100_000;
/// When a round last ran past `DIRECT_MAX` (see `micros`; 0: never).
static LAST_OVERRUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether a round ran past `DIRECT_MAX` within the last `BUSY_MICROS`.
fn server_busy() -> bool {
    let last = LAST_OVERRUN.load(Relaxed);
    last != 0 && micros().saturating_sub(last) < BUSY_MICROS
}

/// A writer thread that wakes to fewer frames than this, with the queue
/// busy (the frame came within `HOT_MICROS`), waits `COALESCE` for more
/// before it writes. This costs latency only under load, where it buys
/// throughput (measured on 1 x 100 fan-out, 10 senders: about +40 %
/// delivered frames/s, and a lower p99, as the two cores do fewer sends
/// and wake-ups).
const COALESCE_BELOW: usize = 8;
const COALESCE: Duration = Duration::from_micros(500);

/// Microseconds since the first call: a cheap clock for `last_write`.
fn micros() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
}
/// Batches a pushing thread writes for a client before it leaves the rest
/// to a writer thread: it has its own client to serve.
const DIRECT_PASSES: usize = 4;
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
    /// A batch a send left unfinished (the socket would have blocked), for
    /// the writer thread to finish first. Only the role's holder uses it.
    unfinished: Mutex<Option<(Batch, usize)>>,
    /// When a pushing thread last wrote to the socket (see `micros`).
    last_write: std::sync::atomic::AtomicU64,
    encoding: Encoding,
    metrics: Arc<Metrics>,
}

impl Outbox {
    /// A queue for the client on `socket` (none for a long-polling client),
    /// written in `encoding`.
    #[inline(never)]
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
            unfinished: Mutex::new(None),
            last_write: std::sync::atomic::AtomicU64::new(0),
            encoding,
            metrics,
        };
        Outbox {
            tx,
            queue: Arc::new(queue),
        }
    }

    /// Queues a transport message (a Pong, a ping, an Engine.IO packet, a
    /// Close) and wakes the writer; for callers holding no lock.
    pub(crate) fn control(&self, item: Outbound) {
        let _ = self.enqueue(item);
        self.wake(&Round::first());
    }

    /// Queues `item`; true if it must be woken (it claimed the writer
    /// role, or overflowed the queue), which the caller does once it holds
    /// no lock (`Mailbox::wake`).
    pub(crate) fn enqueue_for_wake(&self, item: Outbound) -> bool {
        self.enqueue(item).unwrap_or(true)
    }

    /// Queues `item` to be written on the next `wake`.
    pub(crate) fn queue(&self, item: Outbound) {
        let _ = self.enqueue(item);
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
            // One item counts for half the byte bound at most: a `joined`
            // for a big room (users and history can pass 1 MiB) is not a
            // sign of a slow reader, and still leaves room for the answers
            // that follow it. Items are bounded in size (the message size
            // limit, the room), so the queue is still bounded.
            let weight = item.weight().min(MAX_QUEUED_BYTES / 2);
            let frames = q.frames.fetch_add(1, Relaxed) + 1;
            let bytes = q.bytes.fetch_add(weight, Relaxed) + weight;
            if frames > MAX_QUEUED_FRAMES || bytes > MAX_QUEUED_BYTES {
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
            static FAILED: Mutex<Throttle> = Mutex::new(Throttle::new(Duration::from_secs(10)));
            let failed = FAILED.lock().unwrap_or_else(|p| p.into_inner()).tick();
            if let Some(count) = failed {
                warn!("cannot start a writer thread ({count} times): {e}; dropping the client");
            }
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

    /// A long-polling client moved to a WebSocket: from now on the queue is
    /// written to `socket`, starting with what is queued now, on the next
    /// `wake`.
    pub(crate) fn attach(&self, socket: Arc<TcpStream>) {
        let q = &self.queue;
        if q.socket.set(socket).is_ok() && !q.writer.swap(true, SeqCst) {
            q.start_pending.store(true, SeqCst);
        }
    }

    /// Holding the writer role: writes what is queued without blocking, a
    /// few batches at most, then gives the role back, or hands it to a
    /// writer thread if the socket would block or more keeps coming.
    fn write_now(&self) {
        let q = &self.queue;
        let Some(socket) = q.socket.get() else {
            q.writer.store(false, SeqCst);
            return;
        };
        for _ in 0..DIRECT_PASSES {
            let mut batch = Batch::default();
            if !q.take_batch(&mut batch) {
                if q.give_back_role() {
                    return;
                }
                continue; // something came meanwhile, and the role is ours again
            }
            if q.overflowed.load(Relaxed) {
                break; // the writer thread says 1013
            }
            match batch.write(socket, q.encoding, 0, Send::Nonblocking) {
                Ok(Written::All) => q.sent(&batch.items),
                Ok(Written::Close) => {
                    q.sent(&batch.items);
                    return q.finish(socket, true);
                }
                Ok(Written::Partly(done)) => {
                    *q.lock_unfinished() = Some((batch, done));
                    break;
                }
                Err(_) => return q.finish(socket, false),
            }
        }
        self.start_writer();
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

    fn wake(&self, round: &Round) {
        let q = &self.queue;
        if q.overflow_pending.swap(false, SeqCst) {
            q.cut_off();
        }
        if q.start_pending.swap(false, SeqCst) {
            let now = micros();
            let last = q.last_write.swap(now, Relaxed);
            if round.woken_before() >= DIRECT_MAX {
                LAST_OVERRUN.store(now, Relaxed);
                self.start_writer();
            } else if last != 0 && now.saturating_sub(last) < HOT_MICROS {
                self.start_writer();
            } else {
                self.write_now();
            }
        } else if q.overflowed.load(Relaxed)
            && q.socket.get().is_some()
            && !q.writer.swap(true, SeqCst)
        {
            // The slow consumer's Close 1013 waits for its peer: a thread's job.
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

/// The writer thread, holding the role: finishes what a non-blocking send
/// left, then drains the queue batch by batch with blocking sends (each
/// bounded by the socket's write timeout) until it stays empty for
/// `WRITER_IDLE`, a Close is written, a write fails, or the client is
/// gone. Only the first of these gives the role back; after the others
/// nothing more may be written, so the role is kept.
fn run_writer(queue: &Queue) {
    let socket = queue
        .socket
        .get()
        .expect("a writer starts only with a socket");
    let unfinished = queue.lock_unfinished().take();
    let (mut batch, mut done) = unfinished.unwrap_or_default();
    loop {
        if batch.items.is_empty() {
            let busy = match queue.next_batch(&mut batch) {
                Next::Batch { busy } => busy,
                Next::Idle => return,
                Next::Gone => break,
            };
            // A busy client's writer lets a little more gather before it
            // writes: one send for many frames instead of one each.
            if busy && batch.items.len() < COALESCE_BELOW {
                thread::sleep(COALESCE);
                queue.fill(&mut batch);
            }
        }
        if queue.overflowed.load(Relaxed) {
            let _ = (&**socket).write_all(&frame::close(1013, "slow consumer"));
            break;
        }
        let written = batch.write(socket, queue.encoding, done, Send::Blocking);
        queue.sent(&batch.items);
        batch.clear();
        done = 0;
        match written {
            Ok(Written::All) => {}
            Ok(Written::Close) => return queue.finish(socket, true),
            Ok(Written::Partly(_)) | Err(_) => break,
        }
    }
    queue.finish(socket, false);
}

/// What the writer found waiting.
enum Next {
    /// A batch to write; `busy` if its first item came within `HOT_MICROS`.
    Batch { busy: bool },
    /// Nothing for a while: the role was given back.
    Idle,
    /// The client is gone.
    Gone,
}

impl Queue {
    /// A slow consumer: counted, logged once, and its reader woken (its
    /// blocking read ends, and with it the connection).
    #[cold]
    #[inline(never)]
    fn cut_off(&self) {
        let (frames, bytes) = (self.frames.load(Relaxed), self.bytes.load(Relaxed));
        warn!(
            "a client is a slow consumer ({frames} frames, {bytes} bytes queued); disconnecting it"
        );
        self.metrics.slow_consumer_disconnect();
        if let Some(socket) = self.socket.get() {
            let _ = socket.shutdown(Shutdown::Read);
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, usize> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_unfinished(&self) -> std::sync::MutexGuard<'_, Option<(Batch, usize)>> {
        self.unfinished.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the first item, then takes whatever else is queued (see
    /// `fill`). Idle for `WRITER_IDLE` while the server is not busy (see
    /// `server_busy`), the writer gives its role back.
    fn next_batch(&self, batch: &mut Batch) -> Next {
        let waiting = std::time::Instant::now();
        loop {
            match self.rx.recv_timeout(WRITER_IDLE) {
                Ok(first) => {
                    self.release(std::slice::from_ref(&first));
                    batch.items.push(first);
                    self.fill(batch);
                    let busy = waiting.elapsed() < Duration::from_micros(HOT_MICROS);
                    return Next::Batch { busy };
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !server_busy() && self.give_back_role() {
                        return Next::Idle;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Next::Gone,
            }
        }
    }

    /// Takes whatever is queued, without waiting; false if nothing is.
    fn take_batch(&self, batch: &mut Batch) -> bool {
        self.fill(batch);
        !batch.items.is_empty()
    }

    /// Adds queued items to `batch`, up to `MAX_BATCH` items and
    /// `MAX_BATCH_BYTES`, and takes them off the queue's bounds.
    fn fill(&self, batch: &mut Batch) {
        let start = batch.items.len();
        let mut bytes: usize = batch.items.iter().map(Outbound::weight).sum();
        while batch.items.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(item) => {
                    bytes += item.weight();
                    batch.items.push(item);
                }
                Err(_) => break,
            }
        }
        self.release(&batch.items[start..]);
    }

    /// The end of writing: after a Close, a half-close (the peer sees our
    /// FIN after the Close; the reader still takes the peer's reply);
    /// after an error or a slow consumer's 1013, the whole socket, which
    /// also wakes a reader still blocked.
    fn finish(&self, socket: &TcpStream, closed: bool) {
        let how = if closed {
            Shutdown::Write
        } else {
            Shutdown::Both
        };
        let _ = socket.shutdown(how);
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
        let weight = |i: &Outbound| i.weight().min(MAX_QUEUED_BYTES / 2);
        let (frames, bytes) = counted.fold((0, 0), |(n, b), i| (n + 1, b + weight(i)));
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
    /// The socket would have blocked after this many bytes (a send that
    /// must not block), or the peer took no more (one that may).
    Partly(usize),
}

/// Whether a send may block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Send {
    /// A pushing thread's send, which must not wait for the peer.
    Nonblocking,
    /// A writer thread's, bounded by the socket's write timeout.
    Blocking,
}

impl Batch {
    /// Writes the batch (up to and including a Close) with vectored sends,
    /// the first `skip` bytes having been written already.
    fn write(
        &mut self,
        socket: &TcpStream,
        encoding: Encoding,
        skip: usize,
        send: Send,
    ) -> io::Result<Written> {
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
        let mut slices = &mut slices[..];
        IoSlice::advance_slices(&mut slices, skip);
        let written = send_all(socket, slices, send)?;
        Ok(match written {
            Some(n) => Written::Partly(skip + n),
            None if closing => Written::Close,
            None => Written::All,
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

/// Sends every slice; None when all went, or Some(bytes sent) when a
/// non-blocking send would have blocked.
fn send_all(
    socket: &TcpStream,
    mut slices: &mut [IoSlice<'_>],
    send: Send,
) -> io::Result<Option<usize>> {
    let sock = socket2::SockRef::from(socket);
    let mut sent = 0;
    while !slices.is_empty() {
        let result = match send {
            Send::Nonblocking => sock.send_vectored_with_flags(slices, libc::MSG_DONTWAIT),
            Send::Blocking => (&*socket).write_vectored(slices),
        };
        match result {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                sent += n;
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && send == Send::Nonblocking => {
                return Ok(Some(sent));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}
