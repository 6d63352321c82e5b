//! The writer role and the threads that hold it: who writes a client's
//! socket, and when (see the design in `outbox`'s docs).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::warn;

use super::queue::{Outbound, Queue};
use super::Line;
use crate::codec::{engineio, frame, Encoding};
use crate::throttle::Throttle;

/// Stack for a delivery worker or a blocking writer: it only encodes
/// frames and sends them.
const WRITER_STACK: usize = 128 * 1024;

/// A client's writer role, and the socket it writes.
pub(super) struct Writer {
    /// The role: true while some thread holds it (or a pool's line does).
    role: AtomicBool,
    /// None while the client long-polls (its GETs take the queue).
    socket: OnceLock<Arc<TcpStream>>,
    /// Blocking writer threads running for this client (0, or 1 for a
    /// moment while one hands over to the next), and a signal when one ends.
    blocking: Mutex<usize>,
    blocking_ended: Condvar,
    /// Tests: times two threads were writing this socket at once.
    #[cfg(test)]
    pub(super) overlaps: std::sync::atomic::AtomicUsize,
    #[cfg(test)]
    writing: AtomicBool,
}

impl Writer {
    pub(super) fn new(socket: Option<Arc<TcpStream>>) -> Writer {
        Writer {
            role: AtomicBool::new(false),
            socket: socket.map(OnceLock::from).unwrap_or_default(),
            blocking: Mutex::new(0),
            blocking_ended: Condvar::new(),
            #[cfg(test)]
            overlaps: Default::default(),
            #[cfg(test)]
            writing: AtomicBool::new(false),
        }
    }

    pub(super) fn socket(&self) -> Option<&Arc<TcpStream>> {
        self.socket.get()
    }

    /// From now on the queue is written to `socket` (a long-polling client
    /// upgraded). Whoever wakes the mailbox next writes what is queued.
    pub(super) fn attach(&self, socket: Arc<TcpStream>) {
        let _ = self.socket.set(socket);
    }

    /// Whether the role is free (a push then asks for a wake). The caller
    /// queued its item before asking, with a fence in between.
    pub(super) fn free(&self) -> bool {
        self.socket.get().is_some() && !self.role.load(SeqCst)
    }

    /// Claims the role: true if the caller holds it now and must write.
    pub(super) fn claim(&self) -> bool {
        self.socket.get().is_some() && !self.role.swap(true, SeqCst)
    }

    /// Gives the role back. Then looks at the queue again: a push that
    /// came while the role was still held asked for no wake, so if
    /// something is queued the role is claimed back; false then (the
    /// caller still holds it and must see to the rest). True: done (the
    /// queue was empty, or someone else claimed the role and writes it).
    pub(super) fn give_back(&self, queue: &Queue) -> bool {
        self.role.store(false, SeqCst);
        std::sync::atomic::fence(SeqCst);
        queue.is_empty() || self.role.swap(true, SeqCst)
    }

    /// Waits until no blocking writer runs, or `timeout` passes.
    pub(super) fn wait_blocking(&self, timeout: Duration) {
        let running = self.lock_blocking();
        let _ = self
            .blocking_ended
            .wait_timeout_while(running, timeout, |n| *n > 0);
    }

    fn lock_blocking(&self) -> MutexGuard<'_, usize> {
        self.blocking.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blocking_ended(&self) {
        *self.lock_blocking() -= 1;
        self.blocking_ended.notify_all();
    }

    #[cfg(test)]
    fn enter(&self) {
        if self.writing.swap(true, SeqCst) {
            self.overlaps.fetch_add(1, SeqCst);
        }
    }

    #[cfg(test)]
    fn leave(&self) {
        self.writing.store(false, SeqCst);
    }
}

/// The server's delivery workers: a line of clients whose role is held
/// and who have something to write, and the threads that write them, one
/// non-blocking pass each. One worker per core, so a big round is written
/// by at most as many threads as there are cores. Owned by the server's
/// state; two servers share nothing.
pub(crate) struct Pool {
    jobs: Mutex<Jobs>,
    ready: Condvar,
    /// Writer threads that could not be started, for the log.
    spawn_failures: Mutex<Throttle>,
}

#[derive(Default)]
struct Jobs {
    line: VecDeque<Arc<Line>>,
    workers: usize,
    /// Workers waiting for a job, and not yet signalled.
    sleeping: usize,
    stopped: bool,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

impl Pool {
    /// A pool with no worker yet (`start`): until then every round is
    /// written by the threads that wake it.
    pub(crate) fn new() -> Pool {
        Pool {
            jobs: Mutex::default(),
            ready: Condvar::new(),
            spawn_failures: Mutex::new(Throttle::new(Duration::from_secs(10))),
        }
    }

    /// Workers for a machine with `cores`: one each.
    pub(crate) fn workers_for(cores: usize) -> usize {
        cores.max(1)
    }

    /// Starts `workers` threads; they end after `stop`, once the line is empty.
    pub(crate) fn start(self: &Arc<Self>, workers: usize) -> io::Result<Vec<JoinHandle<()>>> {
        let mut threads = Vec::with_capacity(workers);
        for _ in 0..workers {
            let pool = Arc::clone(self);
            let thread = thread::Builder::new()
                .name("delivery".into())
                .stack_size(WRITER_STACK)
                .spawn(move || pool.run_worker())?;
            self.lock().workers += 1;
            threads.push(thread);
        }
        Ok(threads)
    }

    /// Shutdown: no more jobs are taken in; workers end once the line is empty.
    pub(crate) fn stop(&self) {
        self.lock().stopped = true;
        self.ready.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a client whose role is held at the back of the line. Given
    /// back when no worker runs: then the caller writes it.
    pub(super) fn put(&self, line: Arc<Line>) -> Result<(), Arc<Line>> {
        let mut jobs = self.lock();
        if jobs.workers == 0 || jobs.stopped {
            return Err(line);
        }
        jobs.line.push_back(line);
        if jobs.sleeping > 0 {
            jobs.sleeping -= 1;
            drop(jobs);
            self.ready.notify_one();
        }
        Ok(())
    }

    fn run_worker(&self) {
        loop {
            let line = {
                let mut jobs = self.lock();
                loop {
                    if let Some(line) = jobs.line.pop_front() {
                        break line;
                    }
                    if jobs.stopped {
                        return;
                    }
                    jobs.sleeping += 1;
                    jobs = self.ready.wait(jobs).unwrap_or_else(|p| p.into_inner());
                }
            };
            write(&line);
        }
    }

    fn spawn_failed(&self, e: &io::Error) {
        let failed = self
            .spawn_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tick();
        if let Some(count) = failed {
            warn!("cannot start a writer thread ({count} times): {e}; dropping the client");
        }
    }
}

/// Holding `line`'s role, on a thread that must not block (a waking thread
/// or a worker): one pass, then the role is given back, or the client goes
/// to the back of the pool's line (more came), or to a blocking writer
/// thread (its socket would block).
pub(super) fn write(line: &Arc<Line>) {
    loop {
        match pass(line, Send::Nonblocking) {
            Pass::Wrote | Pass::Empty => {
                if line.writer.give_back(&line.queue) {
                    return;
                }
                // More came, and the role is ours again: the next pass
                // waits its turn behind the other clients, if there is a
                // pool; with none, this thread goes on.
                if line.pool.put(Arc::clone(line)).is_ok() {
                    return;
                }
            }
            Pass::Blocked(batch, done) => return start_blocking(line, batch, done),
            Pass::Ended => return,
        }
    }
}

/// How a pass ended.
enum Pass {
    /// Nothing was queued.
    Empty,
    /// A batch was written whole.
    Wrote,
    /// The socket would block after `.1` bytes of the batch.
    Blocked(Batch, usize),
    /// A Close was written, or the socket failed: the role is kept for
    /// good, as nothing more may be written.
    Ended,
}

/// One pass, holding the role: everything queued (up to a batch's bounds)
/// in one vectored send. A slow consumer gets its Close 1013 instead.
fn pass(line: &Line, send: Send) -> Pass {
    let mut batch = Batch::default();
    if line.queue.overflowed() {
        batch.slow = true;
        batch
            .items
            .push(Outbound::Close(frame::close(1013, "slow consumer")));
    } else {
        line.queue.take(&mut batch.items);
        if batch.items.is_empty() {
            return Pass::Empty;
        }
    }
    write_batch(line, batch, 0, send)
}

/// Writes `batch`, whose first `skip` bytes are written already.
fn write_batch(line: &Line, mut batch: Batch, skip: usize, send: Send) -> Pass {
    let socket = line
        .writer
        .socket()
        .expect("the role is claimed only with a socket");
    #[cfg(test)]
    line.writer.enter();
    let written = batch.write(socket, line.encoding, skip, send);
    #[cfg(test)]
    line.writer.leave();
    match written {
        Ok(Written::All) => {
            line.written(&batch.items);
            Pass::Wrote
        }
        Ok(Written::Partly(done)) => Pass::Blocked(batch, done),
        Ok(Written::Close) => {
            line.written(&batch.items);
            finish(socket, !batch.slow);
            Pass::Ended
        }
        Err(_) => {
            line.queue.written(&batch.items);
            finish(socket, false);
            Pass::Ended
        }
    }
}

/// The end of writing: after a Close, a half-close (the peer sees our FIN
/// after the Close; the reader still takes the peer's reply); after an
/// error or a slow consumer's 1013, the whole socket, which also wakes a
/// reader still blocked.
fn finish(socket: &TcpStream, closed: bool) {
    let how = if closed {
        Shutdown::Write
    } else {
        Shutdown::Both
    };
    let _ = socket.shutdown(how);
}

/// A client whose socket would block gets a thread of its own, which holds
/// the role, finishes the batch with blocking sends (each bounded by the
/// socket's write timeout), writes what else is queued, and ends once the
/// queue is empty.
fn start_blocking(line: &Arc<Line>, batch: Batch, done: usize) {
    *line.writer.lock_blocking() += 1;
    let owned = Arc::clone(line);
    let spawned = thread::Builder::new()
        .name("writer".into())
        .stack_size(WRITER_STACK)
        .spawn(move || {
            run_blocking(&owned, batch, done);
            owned.writer.blocking_ended();
        });
    if let Err(e) = spawned {
        line.writer.blocking_ended();
        // Without a writer the client would wait forever: end it instead.
        line.pool.spawn_failed(&e);
        if let Some(socket) = line.writer.socket() {
            finish(socket, false);
        }
    }
}

fn run_blocking(line: &Line, batch: Batch, done: usize) {
    let mut next = write_batch(line, batch, done, Send::Blocking);
    loop {
        match next {
            Pass::Wrote => {}
            Pass::Empty => {
                if line.writer.give_back(&line.queue) {
                    return;
                }
            }
            // A blocking send does not stop halfway: it fails.
            Pass::Blocked(..) | Pass::Ended => return,
        }
        next = pass(line, Send::Blocking);
    }
}

/// Items taken off the queue for one vectored write.
#[derive(Default)]
struct Batch {
    items: Vec<Outbound>,
    /// Engine.IO packets framed for this write.
    framed: Vec<Box<[u8]>>,
    /// The batch is a slow consumer's 1013.
    slow: bool,
}

/// How a batch's write ended.
enum Written {
    All,
    /// A Close frame was written; nothing may follow it.
    Close,
    /// A send that must not block would have, after this many bytes.
    Partly(usize),
}

/// Whether a send may block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Send {
    /// A waking thread's or a worker's, which must not wait for the peer.
    Nonblocking,
    /// A blocking writer's, bounded by the socket's write timeout.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Mailbox, Round, Wakes};
    use crate::metrics::Metrics;
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Instant;

    use super::super::Outbox;

    /// A connected pair on loopback: (the server's end, the peer's end),
    /// with small kernel buffers both ways if `buffer` says so.
    fn pair(buffer: Option<usize>) -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(size) = buffer {
            peer.set_recv_buffer_size(size).unwrap();
        }
        peer.connect(&addr.into()).unwrap();
        let (server, _) = listener.accept().unwrap();
        if let Some(size) = buffer {
            socket2::SockRef::from(&server)
                .set_send_buffer_size(size)
                .unwrap();
        }
        let peer: TcpStream = peer.into();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (Arc::new(server), peer)
    }

    fn outbox(socket: Arc<TcpStream>, pool: &Arc<Pool>) -> Outbox {
        let metrics = Arc::new(Metrics::default());
        Outbox::new(Some(socket), Encoding::Native, metrics, Arc::clone(pool))
    }

    /// A WebSocket text frame (a short one: 2-byte header) as a raw item.
    fn text(payload: &str) -> Outbound {
        Outbound::Raw(frame::text(payload.as_bytes()))
    }

    /// Reads short text frames until `count` arrived; their payloads.
    fn read_texts(peer: &mut TcpStream, count: usize) -> Vec<String> {
        let mut texts = Vec::with_capacity(count);
        let mut head = [0u8; 2];
        while texts.len() < count {
            peer.read_exact(&mut head).expect("a frame within 5 s");
            assert_eq!(head[0], 0x81, "a text frame");
            let mut payload = vec![0; usize::from(head[1])];
            peer.read_exact(&mut payload).unwrap();
            texts.push(String::from_utf8(payload).unwrap());
        }
        texts
    }

    #[test]
    fn giving_the_role_back_sees_a_push_that_came_meanwhile() {
        let pool = Arc::new(Pool::new());
        let (socket, _peer) = pair(None);
        let outbox = outbox(socket, &pool);
        let line = &outbox.line;
        assert!(line.writer.claim());
        assert!(!line.writer.claim(), "one holder at a time");
        // A push while the role is held asks for no wake...
        assert!(!outbox.enqueue_for_wake(text("a")));
        // ...so the holder, giving the role back, takes it again.
        assert!(!line.writer.give_back(&line.queue));
        assert!(!line.writer.claim(), "still held");
        let mut items = Vec::new();
        line.queue.take(&mut items);
        assert_eq!(items.len(), 1);
        assert!(line.writer.give_back(&line.queue));
        assert!(line.writer.free());
    }

    #[test]
    fn a_wake_writes_everything_queued_and_gives_the_role_back() {
        let pool = Arc::new(Pool::new());
        let (socket, mut peer) = pair(None);
        let outbox = outbox(socket, &pool);
        assert!(outbox.enqueue_for_wake(text("one")));
        assert!(outbox.enqueue_for_wake(text("two")), "not claimed yet");
        outbox.wake(&Round::first());
        assert_eq!(read_texts(&mut peer, 2), ["one", "two"]);
        assert_eq!(outbox.line.queue.held(), (0, 0), "written: places back");
        assert!(outbox.line.writer.free());
    }

    #[test]
    fn a_socket_that_would_block_gets_a_blocking_writer_until_the_queue_is_empty() {
        let pool = Arc::new(Pool::new());
        let (socket, mut peer) = pair(Some(4096));
        let outbox = outbox(socket, &pool);
        let big = "x".repeat(100);
        // Far more than the kernel's buffers hold for a peer that reads nothing.
        for i in 0..4000 {
            outbox.queue(text(&format!("{i:05}{big}")));
        }
        let started = Instant::now();
        outbox.wake(&Round::first());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the waking thread never blocks"
        );
        assert_eq!(*outbox.line.writer.lock_blocking(), 1, "a blocking writer");
        assert!(!outbox.line.writer.free(), "which holds the role");
        // The peer reads: every frame arrives, in order, and the writer ends.
        let mut head = [0u8; 2];
        for i in 0..4000 {
            peer.read_exact(&mut head).unwrap();
            assert_eq!(head, [0x81, 105]);
            let mut payload = [0u8; 105];
            peer.read_exact(&mut payload).unwrap();
            assert_eq!(&payload[..5], format!("{i:05}").as_bytes());
        }
        outbox.wait_for_writer(Duration::from_secs(5));
        assert_eq!(*outbox.line.writer.lock_blocking(), 0);
        assert!(outbox.line.writer.free(), "the role is given back");
        assert_eq!(outbox.line.queue.held(), (0, 0));
    }

    #[test]
    fn nothing_is_written_after_a_close() {
        let pool = Arc::new(Pool::new());
        let (socket, mut peer) = pair(None);
        let outbox = outbox(socket, &pool);
        outbox.queue(text("last"));
        outbox.control(Outbound::Close(frame::close(1000, "bye")));
        outbox.control(text("too late"));
        assert_eq!(read_texts(&mut peer, 1), ["last"]);
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).unwrap();
        assert_eq!(&rest[..], &frame::close(1000, "bye")[..], "then our FIN");
        assert!(!outbox.line.writer.free(), "the role is kept for good");
    }

    #[test]
    fn a_slow_consumer_gets_1013_from_whoever_holds_the_role() {
        let pool = Arc::new(Pool::new());
        let (socket, mut peer) = pair(None);
        let outbox = outbox(socket, &pool);
        for _ in 0..super::super::queue::MAX_QUEUED_FRAMES {
            outbox.queue(Outbound::Ping);
        }
        let event = crate::codec::Outgoing::new("x", &1, None);
        assert_eq!(outbox.push(&event), Err(crate::delivery::Overflow));
        outbox.wake(&Round::first());
        let mut bytes = Vec::new();
        peer.read_to_end(&mut bytes).unwrap();
        assert_eq!(&bytes[..], &frame::close(1013, "slow consumer")[..]);
    }

    /// The hand-off race, many times over: pushers on several threads
    /// queue numbered frames for every client and wake them (alone, in
    /// small rounds the pusher writes, and in big rounds spread over the
    /// pool) while writers give the role back. Every frame must arrive
    /// exactly once, in each pusher's order, and no two threads may ever
    /// write one socket at once. A lost wake-up leaves frames unwritten:
    /// the peer's read times out.
    #[test]
    fn the_hand_off_loses_no_frame_and_never_has_two_writers() {
        const CLIENTS: usize = 20;
        const PUSHERS: usize = 4;
        const FRAMES: usize = 1000;
        let pool = Arc::new(Pool::new());
        let workers = pool.start(2).unwrap();
        let (outboxes, peers): (Vec<_>, Vec<_>) = (0..CLIENTS)
            .map(|_| {
                let (socket, peer) = pair(None);
                (Arc::new(outbox(socket, &pool)), peer)
            })
            .unzip();
        // Readers: every frame of every pusher, in that pusher's order.
        let readers: Vec<_> = peers
            .into_iter()
            .map(|mut peer| {
                thread::spawn(move || {
                    let mut next = [0usize; PUSHERS];
                    for text in read_texts(&mut peer, PUSHERS * FRAMES) {
                        let (p, n) = text.split_once(':').unwrap();
                        let (p, n): (usize, usize) = (p.parse().unwrap(), n.parse().unwrap());
                        assert_eq!(n, next[p], "pusher {p}: frame {n} out of order or twice");
                        next[p] += 1;
                    }
                })
            })
            .collect();
        let outboxes = Arc::new(outboxes);
        let pushers: Vec<_> = (0..PUSHERS)
            .map(|p| {
                let outboxes = Arc::clone(&outboxes);
                thread::spawn(move || {
                    let mut wakes = Wakes::default();
                    for n in 0..FRAMES {
                        let shape = (n + p) % 3;
                        let clients: Vec<&Arc<Outbox>> = match shape {
                            // A big round (spread), or a small one of 4 wakes at a time.
                            0 | 1 => outboxes.iter().collect(),
                            _ => outboxes.iter().rev().collect(),
                        };
                        for (i, outbox) in clients.into_iter().enumerate() {
                            if outbox.enqueue_for_wake(text(&format!("{p}:{n}"))) {
                                let mailbox: Arc<dyn Mailbox> = Arc::clone(outbox) as _;
                                wakes.add(&mailbox);
                            }
                            if shape == 1 && i % 4 == 3 {
                                wakes.wake_all();
                            }
                        }
                        wakes.wake_all();
                    }
                })
            })
            .collect();
        for pusher in pushers {
            pusher.join().unwrap();
        }
        for reader in readers {
            reader.join().expect("every frame once, in order");
        }
        // Every pass is over once the workers (and any blocking writer)
        // ended: only then are the last places given back.
        pool.stop();
        for worker in workers {
            worker.join().unwrap();
        }
        for outbox in outboxes.iter() {
            outbox.wait_for_writer(Duration::from_secs(5));
            let line = &outbox.line;
            assert_eq!(line.writer.overlaps.load(Relaxed), 0, "two writers at once");
            assert_eq!(line.queue.held(), (0, 0));
        }
    }
}
