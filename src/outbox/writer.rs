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
/// non-blocking pass each. Sized from the machine's cores: with the waking
/// thread helping, a round is written by at most as many threads as there
/// are cores. Owned by the server's state; two servers share nothing.
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

    /// Workers for a machine with `cores`: one fewer, as the waking thread
    /// writes too.
    pub(crate) fn workers_for(cores: usize) -> usize {
        cores.saturating_sub(1)
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

    /// The waking thread, at the end of a big round, writes clients from
    /// the line like a worker: at most `max` (its round's size), so that it
    /// gets back to its own client in bounded time.
    pub(super) fn help(&self, max: usize) {
        for _ in 0..max {
            let Some(line) = self.lock().line.pop_front() else {
                return;
            };
            write(&line);
        }
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
