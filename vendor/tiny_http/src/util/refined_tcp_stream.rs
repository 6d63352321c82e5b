use std::io::Result as IoResult;
use std::io::{Error as IoError, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::connection::Connection;
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use crate::ssl::SslStream;

pub(crate) enum Stream {
    Http(Connection),
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    Https(SslStream),
}

impl Clone for Stream {
    fn clone(&self) -> Self {
        match self {
            Stream::Http(tcp_stream) => Stream::Http(tcp_stream.try_clone().unwrap()),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Stream::Https(ssl_stream.clone()),
        }
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(tcp_stream)
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.peer_addr(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.peer_addr(),
        }
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.shutdown(how),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.shutdown(how),
        }
    }

    // roomchat patch: TLS streams keep blocking reads (no socket timeout); their head
    // deadline is only checked between reads. See PATCHES.md.
    fn set_read_timeout(&mut self, dur: Option<Duration>) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.set_read_timeout(dur),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => {
                let _ = dur;
                Ok(())
            }
        }
    }
}

/// Longest single blocking read while a head deadline is armed or awaited (roomchat
/// patch): the reader wakes at least this often, and always by the deadline.
const MAX_READ_SLICE: Duration = Duration::from_secs(1);

/// Deadline for receiving a request head (roomchat patch), shared by the connection's
/// read half, its `ClientConnection` and the answer writers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeadClock {
    /// No deadline: reads block as upstream.
    Off,
    /// Request number `n` is being answered; the deadline starts when that answer is
    /// done. Reads wake every `MAX_READ_SLICE` so they notice it.
    AfterAnswer(u64),
    /// Reads fail with `TimedOut` from then on.
    At(Instant),
}

#[derive(Clone)]
pub(crate) struct HeadDeadline(Arc<Mutex<HeadClock>>);

impl HeadDeadline {
    pub(crate) fn new(at: Option<Instant>) -> HeadDeadline {
        HeadDeadline(Arc::new(Mutex::new(
            at.map_or(HeadClock::Off, HeadClock::At),
        )))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HeadClock> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_at(&self, at: Instant) {
        *self.lock() = HeadClock::At(at);
    }

    /// The head of request `n` is complete; the next deadline waits for its answer.
    pub(crate) fn await_answer(&self, n: u64) {
        *self.lock() = HeadClock::AfterAnswer(n);
    }

    /// The answer to request `n` is done: arm the next head's deadline, unless a later
    /// request has been read meanwhile (pipelining), whose answer will arm it.
    pub(crate) fn answer_done(&self, n: u64, timeout: Duration) {
        let mut clock = self.lock();
        if *clock == HeadClock::AfterAnswer(n) {
            *clock = HeadClock::At(Instant::now() + timeout);
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.read(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.write(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.flush(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.flush(),
        }
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    // roomchat patch: deadline checked by reads, and the SO_RCVTIMEO now set on the socket
    head_deadline: Option<HeadDeadline>,
    read_timeout: Option<Duration>,
}

impl RefinedTcpStream {
    pub(crate) fn new<S>(stream: S) -> (RefinedTcpStream, RefinedTcpStream)
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();

        let (read, write) = (stream.clone(), stream);

        let read = RefinedTcpStream {
            stream: read,
            close_read: true,
            close_write: false,
            head_deadline: None,
            read_timeout: None,
        };

        let write = RefinedTcpStream {
            stream: write,
            close_read: false,
            close_write: true,
            head_deadline: None,
            read_timeout: None,
        };

        (read, write)
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }

    /// Makes reads obey `deadline` while it is set (roomchat patch).
    pub(crate) fn with_head_deadline(mut self, deadline: HeadDeadline) -> Self {
        self.head_deadline = Some(deadline);
        self
    }

    /// Half-closes the sending side of the socket (roomchat patch: used before
    /// draining a refused request so the client sees the end of our answer).
    pub(crate) fn shutdown_write(&mut self) -> IoResult<()> {
        self.stream.shutdown(Shutdown::Write)
    }
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let deadline = match &self.head_deadline {
            Some(deadline) => deadline,
            None => return self.stream.read(buf),
        };
        // roomchat patch: while a head deadline is armed, block at most until the
        // deadline (in slices), so neither a silent nor a trickling client can hold
        // the reading thread past it; while one is awaited, wake up to notice it.
        loop {
            let clock = *deadline.lock();
            let wanted = match clock {
                HeadClock::Off => None,
                HeadClock::AfterAnswer(_) => Some(MAX_READ_SLICE),
                HeadClock::At(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left < Duration::from_millis(1) {
                        return Err(IoError::new(
                            ErrorKind::TimedOut,
                            "request head deadline passed",
                        ));
                    }
                    Some(left.min(MAX_READ_SLICE))
                }
            };
            if wanted != self.read_timeout {
                self.stream.set_read_timeout(wanted)?;
                self.read_timeout = wanted;
            }
            match self.stream.read(buf) {
                Err(e)
                    if wanted.is_some()
                        && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue
                }
                other => return other,
            }
        }
    }
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.stream.flush()
    }
}
