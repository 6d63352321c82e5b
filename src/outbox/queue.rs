//! A client's queue: what waits to be written to it, and its bounds.
//!
//! An item counts toward the bounds from the moment it is queued until its
//! bytes are written (to the socket, or into a long-polling answer that
//! was sent): taking it off the queue does not give its place back, so
//! whatever the transport, what the server holds for a client is bounded.
//! Past the bounds the client is a slow consumer: the push is refused and
//! the queue marked overflowed, once; whoever wakes the mailbox next (with
//! no lock held) cuts the client off, and its reader learns it first (its
//! socket's read side is shut), before the writer gets the 1013 out.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::codec::Outgoing;
use crate::delivery::Overflow;

/// A client whose queue holds more than this many bytes is a slow consumer.
pub(crate) const MAX_QUEUED_BYTES: usize = 1 << 20;
/// A client whose queue holds more than this many frames is a slow consumer.
pub(crate) const MAX_QUEUED_FRAMES: usize = 4096;
/// At most this many items go into one vectored write (Linux's IOV_MAX is 1024).
pub(super) const MAX_BATCH: usize = 512;
/// A writer takes items off the queue until it holds this many bytes (or
/// one item, however large).
pub(super) const MAX_BATCH_BYTES: usize = 256 * 1024;

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
    /// A Close frame (see `frame::close`); nothing is written after it.
    Close(Box<[u8]>),
}

impl Outbound {
    /// What the item costs in the queue's byte bound.
    pub(super) fn weight(&self) -> usize {
        match self {
            Outbound::Event(event) => event.weight(),
            Outbound::Packet(text) => text.len() + 8,
            Outbound::Raw(bytes) | Outbound::Close(bytes) => bytes.len(),
            Outbound::Ping => 8,
        }
    }

    /// (frames, bytes) the item holds of the bounds. The final Close holds
    /// none: it always gets in. One item counts for half the byte bound at
    /// most: a `joined` for a big room (users and history can pass 1 MiB)
    /// is not a sign of a slow reader, and still leaves room for the
    /// answers that follow it. Items are bounded in size (the message size
    /// limit, the room), so the queue is still bounded.
    fn held(&self) -> (usize, usize) {
        match self {
            Outbound::Close(_) => (0, 0),
            _ => (1, self.weight().min(MAX_QUEUED_BYTES / 2)),
        }
    }
}

/// What a long-polling GET found.
pub(crate) enum Taken<T> {
    Item(Outbound),
    Other(T),
    Nothing,
}

/// A client's bounded queue. Many threads push; only the holder of the
/// writer role (or a long-polling GET) takes.
pub(super) struct Queue {
    tx: Sender<Outbound>,
    rx: Receiver<Outbound>,
    /// Frames and bytes held: queued, or taken and not yet written.
    frames: AtomicUsize,
    bytes: AtomicUsize,
    /// The bounds were passed: the client is being cut off.
    overflowed: AtomicBool,
    /// The overflow still needs handling outside the lock (see `take_overflow`).
    overflow_pending: AtomicBool,
}

impl Queue {
    pub(super) fn new() -> Queue {
        let (tx, rx) = crossbeam_channel::unbounded();
        Queue {
            tx,
            rx,
            frames: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            overflow_pending: AtomicBool::new(false),
        }
    }

    /// Queues `item` within the bounds (a Close always gets in). Past them
    /// the item is dropped and the queue marked overflowed. Never blocks:
    /// called under the registry's lock.
    pub(super) fn push(&self, item: Outbound) -> Result<(), Overflow> {
        let (frames, bytes) = item.held();
        if frames > 0 {
            if self.overflowed.load(Relaxed) {
                return Err(Overflow);
            }
            let held_frames = self.frames.fetch_add(frames, Relaxed) + frames;
            let held_bytes = self.bytes.fetch_add(bytes, Relaxed) + bytes;
            if held_frames > MAX_QUEUED_FRAMES || held_bytes > MAX_QUEUED_BYTES {
                self.frames.fetch_sub(frames, Relaxed);
                self.bytes.fetch_sub(bytes, Relaxed);
                if !self.overflowed.swap(true, Relaxed) {
                    self.overflow_pending.store(true, SeqCst);
                }
                return Err(Overflow);
            }
        }
        // The receiver lives as long as the sender: this cannot fail.
        let _ = self.tx.send(item);
        Ok(())
    }

    /// Whether the bounds were passed (the client is being cut off).
    pub(super) fn overflowed(&self) -> bool {
        self.overflowed.load(Relaxed)
    }

    /// True once, for the first caller after the queue overflowed.
    pub(super) fn take_overflow(&self) -> bool {
        self.overflow_pending.load(Relaxed) && self.overflow_pending.swap(false, SeqCst)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// (frames, bytes) held now.
    pub(super) fn held(&self) -> (usize, usize) {
        (self.frames.load(Relaxed), self.bytes.load(Relaxed))
    }

    /// Moves what is queued into `items`, up to `MAX_BATCH` items and
    /// `MAX_BATCH_BYTES` (or one item, however large). They still count
    /// toward the bounds until `written`.
    pub(super) fn take(&self, items: &mut Vec<Outbound>) {
        let mut bytes = 0;
        while items.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(item) => {
                    bytes += item.weight();
                    items.push(item);
                }
                Err(_) => break,
            }
        }
    }

    /// The next item if one is queued (it counts until `written`).
    pub(super) fn try_take(&self) -> Option<Outbound> {
        self.rx.try_recv().ok()
    }

    /// The next item, or a message on `other`, whichever comes first within
    /// `timeout`. An item returned counts until `written`.
    pub(super) fn take_or<T>(&self, other: &Receiver<T>, timeout: Duration) -> Taken<T> {
        crossbeam_channel::select! {
            recv(self.rx) -> item => item.map_or(Taken::Nothing, Taken::Item),
            recv(other) -> message => message.map_or(Taken::Nothing, Taken::Other),
            default(timeout) => Taken::Nothing,
        }
    }

    /// Gives back the places of items whose bytes are written (or never
    /// will be).
    pub(super) fn written(&self, items: &[Outbound]) {
        let (frames, bytes) = items
            .iter()
            .map(Outbound::held)
            .fold((0, 0), |(f, b), (n, w)| (f + n, b + w));
        self.frames.fetch_sub(frames, Relaxed);
        self.bytes.fetch_sub(bytes, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(len: usize) -> Outbound {
        Outbound::Packet("x".repeat(len).into())
    }

    #[test]
    fn past_the_frame_bound_a_push_is_refused_and_the_overflow_reported_once() {
        let q = Queue::new();
        for _ in 0..MAX_QUEUED_FRAMES {
            q.push(Outbound::Ping).unwrap();
        }
        assert_eq!(q.push(Outbound::Ping), Err(Overflow));
        assert!(q.overflowed());
        assert!(q.take_overflow());
        assert!(!q.take_overflow(), "reported once");
        assert_eq!(q.push(Outbound::Ping), Err(Overflow), "stays overflowed");
        assert_eq!(q.held().0, MAX_QUEUED_FRAMES);
        // The final Close always gets in, and holds nothing.
        q.push(Outbound::Close(Box::default())).unwrap();
        assert_eq!(q.held().0, MAX_QUEUED_FRAMES);
    }

    #[test]
    fn past_the_byte_bound_a_push_is_refused_and_one_item_counts_half_at_most() {
        let q = Queue::new();
        // Two items bigger than the whole bound fit: each counts for half.
        q.push(packet(2 * MAX_QUEUED_BYTES)).unwrap();
        q.push(packet(2 * MAX_QUEUED_BYTES)).unwrap();
        assert_eq!(q.held(), (2, MAX_QUEUED_BYTES));
        assert_eq!(q.push(packet(1)), Err(Overflow));
    }

    #[test]
    fn taken_items_hold_their_place_until_written() {
        let q = Queue::new();
        for _ in 0..3 {
            q.push(packet(100)).unwrap();
        }
        let mut items = Vec::new();
        q.take(&mut items);
        assert_eq!(items.len(), 3);
        assert!(q.is_empty());
        assert_eq!(q.held(), (3, 3 * 108), "taken is not written");
        q.written(&items[..1]);
        assert_eq!(q.held(), (2, 2 * 108));
        q.written(&items[1..]);
        assert_eq!(q.held(), (0, 0));
    }

    #[test]
    fn a_take_stops_at_the_batch_bounds_but_takes_one_item_however_large() {
        let q = Queue::new();
        for _ in 0..MAX_BATCH + 1 {
            q.push(Outbound::Ping).unwrap();
        }
        let mut items = Vec::new();
        q.take(&mut items);
        assert_eq!(items.len(), MAX_BATCH);
        let q = Queue::new();
        q.push(packet(MAX_BATCH_BYTES)).unwrap();
        q.push(packet(1)).unwrap();
        let mut items = Vec::new();
        q.take(&mut items);
        assert_eq!(items.len(), 1);
    }
}
