//! A client's outbound queue and its writer. Everything the server sends a
//! client (broadcasts, replies, the reader's Pong and Close answers) goes
//! through this queue; only the holder of the client's writer role writes
//! its socket, so frames never interleave and a client that stops reading
//! only fills its own queue.
//!
//! # The design
//!
//! ```text
//!  pushes (under the registry lock) ──► queue ──► writer role (one atomic flag)
//!                                                  │ claimed by the waking thread, no lock held
//!          round of < SPREAD_MIN wakes ────────────┤──► this thread: one non-blocking writev
//!          round of ≥ SPREAD_MIN wakes ────────────┘──► the server's pool line ──► a worker (one
//!                                                         per core): one non-blocking writev
//!          more came meanwhile ───────────────────────► the back of the pool's line
//!          a writev that would block ─────────────────► a blocking writer thread for that client,
//!                                                         until its queue is empty
//! ```
//!
//! A push queues the item and asks for a wake if the role is free. Once no
//! lock is held, the waking thread claims the role with one atomic swap;
//! whoever wins writes. A small round is written by the waking thread
//! itself; a big one is spread: every client goes to the back of the
//! server's line ([`Pool`]), whose workers (one per core) each take the
//! next client and write it. A pass takes everything queued (up to 512
//! frames or 256 KiB) and writes it with one vectored send that never
//! blocks; if more came meanwhile, the client goes to the back of the line
//! again. So a client that falls behind is not woken per frame: while it
//! waits in the line its role is held, pushes ask for no wake, and its
//! next pass writes all that piled up. Only if the socket would block does
//! the client get a thread of its own, which finishes with blocking sends
//! and ends when the queue is empty.
//!
//! # Invariants
//!
//! - **Who writes.** Only the holder of the role writes the socket; the
//!   role is taken with `swap(true)` and held by one thread at a time (or
//!   by the client's place in the pool's line, which one worker takes).
//! - **No lost frame.** A push queues, then looks at the role; a holder
//!   giving the role back clears it, then looks at the queue. One of the
//!   two sees the other (both with a `SeqCst` fence between), so a frame
//!   pushed while the role is being given back is written by one of them.
//! - **When a frame is written.** In the wake that follows its push, by
//!   the waking thread or in the pool's line, with no timer anywhere: no
//!   decision depends on how fast the machine or the peer is, only on
//!   counts (a round's size) and states (queue empty, socket would block).
//! - **What bounds the writing threads.** A round is written by its waking
//!   thread alone, or by the pool: at most as many threads as there are
//!   cores.
//!   A blocking writer exists only for a client whose socket is full, and
//!   only until its queue is empty; a client that stays behind passes its
//!   bounds (1 MiB / 4096 frames) and is cut off with Close 1013. An idle
//!   client has no writer thread.
//! - **What is held.** Everything queued counts toward the client's bounds
//!   until its bytes are written, control frames included (a peer that
//!   sends Pings and never reads the Pongs fills its queue like any other),
//!   except the final Close. A long-polling client has no socket until it
//!   upgrades: its held GET takes what is queued, which counts until the
//!   answer is written.
//!
//! [`queue`] holds the bounds; [`writer`] the role, the pool and the sends.

mod queue;
mod writer;

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{fence, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use log::warn;

use crate::codec::{frame, Encoding, Outgoing};
use crate::delivery::{Mailbox, Overflow, Round};
use crate::metrics::Metrics;

use queue::Queue;
pub(crate) use queue::{Outbound, Taken};
pub(crate) use writer::Pool;
use writer::Writer;

/// A round of fewer wakes than this is written by the waking thread alone:
/// a send costs a few microseconds, and waking a worker about as much as
/// a few sends. A count, not a time.
const SPREAD_MIN: usize = 16;

/// A client's queue, and the socket its writer writes to.
pub(crate) struct Outbox {
    line: Arc<Line>,
}

/// What the threads that write a client share: its queue, its writer role
/// and socket, and the server's pool.
pub(crate) struct Line {
    queue: Queue,
    writer: Writer,
    encoding: Encoding,
    metrics: Arc<Metrics>,
    pool: Arc<Pool>,
}

impl Line {
    /// Items whose bytes are written: their places are given back, and the
    /// chat events among them counted sent (none after a Close).
    fn written(&self, items: &[Outbound]) {
        self.queue.written(items);
        let events = items
            .iter()
            .take_while(|i| !matches!(i, Outbound::Close(_)))
            .filter(|i| matches!(i, Outbound::Event(_)))
            .count();
        self.metrics.add_frames_sent(events as u64);
    }
}

impl Outbox {
    /// A queue for the client on `socket` (none for a long-polling client),
    /// written in `encoding`, with the help of the server's `pool`.
    #[inline(never)]
    pub(crate) fn new(
        socket: Option<Arc<TcpStream>>,
        encoding: Encoding,
        metrics: Arc<Metrics>,
        pool: Arc<Pool>,
    ) -> Outbox {
        Outbox {
            line: Arc::new(Line {
                queue: Queue::new(),
                writer: Writer::new(socket),
                encoding,
                metrics,
                pool,
            }),
        }
    }

    /// Queues a transport message (a Pong, a ping, an Engine.IO packet, a
    /// Close) and wakes the writer; for callers holding no lock.
    pub(crate) fn control(&self, item: Outbound) {
        let _ = self.enqueue(item);
        self.wake(&Round::first());
    }

    /// Queues `item`; true if it must be woken (the role was free, or the
    /// queue overflowed), which the caller does once it holds no lock
    /// (`Mailbox::wake`).
    pub(crate) fn enqueue_for_wake(&self, item: Outbound) -> bool {
        self.enqueue(item).unwrap_or(true)
    }

    /// Queues `item` to be written on the next `wake`.
    pub(crate) fn queue(&self, item: Outbound) {
        let _ = self.enqueue(item);
    }

    /// Whether the queue went past its bounds (the client is being cut off).
    pub(crate) fn overflowed(&self) -> bool {
        self.line.queue.overflowed()
    }

    /// Whether everything queued has been written.
    pub(crate) fn drained(&self) -> bool {
        self.line.queue.held().0 == 0
    }

    /// Queues `item`; Ok(true) if the role is free, for `wake` to claim.
    fn enqueue(&self, item: Outbound) -> Result<bool, Overflow> {
        self.line.queue.push(item)?;
        // Queue first, then look at the role (see `Writer::give_back`).
        fence(SeqCst);
        Ok(self.line.writer.free())
    }

    /// Waits until no blocking writer thread runs, or `timeout` passes. A
    /// reader waits for its writer before it gives up its socket's place,
    /// so a writer blocked on a peer that reads nothing is still counted.
    pub(crate) fn wait_for_writer(&self, timeout: Duration) {
        self.line.writer.wait_blocking(timeout);
    }

    /// A long-polling client moved to a WebSocket: from now on the queue is
    /// written to `socket`, starting with what is queued now, on the next
    /// `wake`.
    pub(crate) fn attach(&self, socket: Arc<TcpStream>) {
        self.line.writer.attach(socket);
    }

    /// For a long-polling GET: the next queued item, or a message on
    /// `other`, whichever comes first within `timeout`. An item returned
    /// holds its place in the bounds until `written`.
    pub(crate) fn take_or<T>(&self, other: &Receiver<T>, timeout: Duration) -> Taken<T> {
        self.line.queue.take_or(other, timeout)
    }

    /// For a long-polling GET: the next item if one is queued (held until
    /// `written`).
    pub(crate) fn try_take(&self) -> Option<Outbound> {
        self.line.queue.try_take()
    }

    /// For a long-polling GET: the items taken are written (the answer
    /// was sent, or given up).
    pub(crate) fn written(&self, items: &[Outbound]) {
        self.line.written(items);
    }

    /// A slow consumer: counted, logged once, and its reader woken (its
    /// blocking read ends, and with it the connection).
    #[cold]
    #[inline(never)]
    fn cut_off(&self) {
        let (frames, bytes) = self.line.queue.held();
        warn!(
            "a client is a slow consumer ({frames} frames, {bytes} bytes queued); disconnecting it"
        );
        self.line.metrics.slow_consumer_disconnect();
        if let Some(socket) = self.line.writer.socket() {
            let _ = socket.shutdown(Shutdown::Read);
        }
    }
}

impl Mailbox for Outbox {
    fn push(&self, event: &Arc<Outgoing>) -> Result<bool, Overflow> {
        self.enqueue(Outbound::Event(Arc::clone(event)))
    }

    fn wake(&self, round: &Round) {
        let line = &self.line;
        if line.queue.take_overflow() {
            self.cut_off();
        }
        if line.writer.claim() {
            if round.size() < SPREAD_MIN {
                writer::write(line);
            } else if let Err(line) = line.pool.put(Arc::clone(line)) {
                writer::write(&line); // no worker runs (shutdown)
            }
        }
    }

    fn close(&self, code: u16, reason: &str) {
        self.control(Outbound::Close(frame::close(code, reason)));
    }

    fn abort(&self) {
        if let Some(socket) = self.line.writer.socket() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}
