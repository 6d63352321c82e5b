//! roomchat patch: request-head limits and deadlines, over real loopback sockets.
//! Every wait is bounded: client sockets time out after `CLIENT_WAIT`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tiny_http::{HeadLimits, Response, Server};

const CLIENT_WAIT: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(1);

/// A server answering every request with `200` and a body `<method> <url> <body length>`
/// (the body is read, except on `/noread`; `/slow` answers after 1.5 s), from one
/// handler thread.
struct TestServer {
    port: u16,
    stop: Arc<AtomicBool>,
    handler: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(server: Server) -> TestServer {
        let port = server.server_addr().to_ip().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_in = stop.clone();
        let handler = thread::spawn(move || {
            while !stop_in.load(Ordering::Relaxed) {
                let mut rq = match server.recv_timeout(Duration::from_millis(20)) {
                    Ok(Some(rq)) => rq,
                    Ok(None) => continue,
                    Err(_) => break,
                };
                let mut body = Vec::new();
                if rq.url() != "/noread" {
                    rq.as_reader().read_to_end(&mut body).unwrap();
                }
                if rq.url() == "/slow" {
                    thread::sleep(DEADLINE + Duration::from_millis(500));
                }
                let text = format!("{} {} {}", rq.method(), rq.url(), body.len());
                rq.respond(Response::from_string(text)).ok();
            }
        });
        TestServer {
            port,
            stop,
            handler: Some(handler),
        }
    }

    fn with_limits(limits: HeadLimits) -> TestServer {
        TestServer::start(Server::http_with_limits("127.0.0.1:0", limits).unwrap())
    }

    fn with_deadline() -> TestServer {
        TestServer::with_limits(HeadLimits {
            head_timeout: Some(DEADLINE),
            ..HeadLimits::default()
        })
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(CLIENT_WAIT)).unwrap();
        stream.set_write_timeout(Some(CLIENT_WAIT)).unwrap();
        stream
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handler) = self.handler.take() {
            handler.join().unwrap();
        }
    }
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field
                .trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_ascii_lowercase())
        })
    }
}

/// Reads one answer (head and `Content-Length` body), failing on EOF or timeout.
fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "EOF inside an answer head"
        );
        head.push(byte[0]);
        assert!(head.len() < 64 * 1024);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let mut answer = Answer {
        status,
        head,
        body: String::new(),
    };
    let length: usize = answer
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    answer.body = String::from_utf8(body).unwrap();
    answer
}

/// True if the server closed the connection (EOF or reset) before `CLIENT_WAIT`.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn assert_about_deadline(elapsed: Duration) {
    assert!(
        elapsed >= DEADLINE - Duration::from_millis(100) && elapsed < DEADLINE * 2,
        "closed after {:?}, deadline {:?}",
        elapsed,
        DEADLINE
    );
}

#[test]
fn head_over_16k_gets_431_and_close() {
    let server = TestServer::with_deadline();
    let mut client = server.connect();
    let big = "a".repeat(20 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", big);
    client.write_all(request.as_bytes()).unwrap();

    let answer = read_answer(&mut client);
    assert_eq!(answer.status, 431);
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert!(closed_by_server(&mut client));
}

#[test]
fn request_line_over_limit_gets_431() {
    let server = TestServer::with_limits(HeadLimits {
        max_head_bytes: 1024,
        ..HeadLimits::default()
    });
    let mut client = server.connect();
    let request = format!("GET /{} HTTP/1.1\r\n\r\n", "p".repeat(2000));
    client.write_all(request.as_bytes()).unwrap();
    assert_eq!(read_answer(&mut client).status, 431);
    assert!(closed_by_server(&mut client));
}

fn request_with_fields(count: usize) -> String {
    let mut request = String::from("GET /fields HTTP/1.1\r\nHost: x\r\n");
    for i in 1..count {
        request.push_str(&format!("X-Field-{}: {}\r\n", i, i));
    }
    request.push_str("\r\n");
    request
}

#[test]
fn over_100_header_fields_get_431_with_default_limits() {
    // the upstream constructor, which now carries the default byte and field limits
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = TestServer::start(Server::from_listener(listener, None).unwrap());

    let mut client = server.connect();
    client
        .write_all(request_with_fields(100).as_bytes())
        .unwrap();
    let answer = read_answer(&mut client);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "GET /fields 0");

    let mut client = server.connect();
    client
        .write_all(request_with_fields(101).as_bytes())
        .unwrap();
    let answer = read_answer(&mut client);
    assert_eq!(answer.status, 431);
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert!(closed_by_server(&mut client));
}

#[test]
fn silent_client_after_partial_head_gets_408_at_deadline() {
    let server = TestServer::with_deadline();
    let mut client = server.connect();
    let start = Instant::now();
    client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();

    let answer = read_answer(&mut client);
    assert_eq!(answer.status, 408);
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert!(closed_by_server(&mut client));
    assert_about_deadline(start.elapsed());
}

#[test]
fn trickling_client_is_closed_at_deadline() {
    let server = TestServer::with_deadline();
    let mut client = server.connect();
    let start = Instant::now();

    let mut writer = client.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_in = stop.clone();
    // one byte every 200 ms: the 40-byte head would take 8 s
    let trickler = thread::spawn(move || {
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n\r\n" {
            if stop_in.load(Ordering::Relaxed) || writer.write_all(&[*byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
    });

    let answer = read_answer(&mut client);
    assert_eq!(answer.status, 408);
    assert!(closed_by_server(&mut client));
    assert_about_deadline(start.elapsed());
    stop.store(true, Ordering::Relaxed);
    trickler.join().unwrap();
}

#[test]
fn silent_client_without_bytes_is_closed_at_deadline() {
    let server = TestServer::with_deadline();
    let mut client = server.connect();
    let start = Instant::now();
    // nothing came, so no 408: just the close
    assert!(closed_by_server(&mut client));
    assert_about_deadline(start.elapsed());
}

#[test]
fn idle_kept_alive_connection_is_closed_after_deadline() {
    let server = TestServer::with_deadline();
    let mut client = server.connect();
    client
        .write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut client).body, "GET /first 0");
    let answered = Instant::now();

    assert!(closed_by_server(&mut client));
    assert_about_deadline(answered.elapsed());
}

#[test]
fn partial_head_on_kept_alive_connection_gets_408() {
    let server = TestServer::with_deadline();
    let mut client = server.connect();
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut client).status, 200);
    let answered = Instant::now();
    client.write_all(b"GET /b HTTP/1.1\r\n").unwrap();
    assert_eq!(read_answer(&mut client).status, 408);
    assert!(closed_by_server(&mut client));
    assert_about_deadline(answered.elapsed());
}

#[test]
fn keep_alive_sequence_outlives_one_deadline() {
    let server = TestServer::with_deadline();
    let mut client = server.connect();
    let start = Instant::now();
    // each pause is under the deadline, the total is well over it: the deadline
    // restarts after every answer
    for i in 0..4 {
        thread::sleep(Duration::from_millis(600));
        let request = format!("GET /seq/{} HTTP/1.1\r\nHost: x\r\n\r\n", i);
        client.write_all(request.as_bytes()).unwrap();
        let answer = read_answer(&mut client);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, format!("GET /seq/{} 0", i));
    }
    assert!(start.elapsed() > DEADLINE * 2);
}

#[test]
fn deadline_counts_from_the_answer_not_the_head() {
    let server = TestServer::with_deadline();
    let mut client = server.connect();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut client).body, "GET /slow 0");
    // 2 s after the head, but only 0.5 s after the answer
    thread::sleep(DEADLINE / 2);
    client
        .write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut client).body, "GET /next 0");
}

#[test]
fn pipelined_requests_are_all_answered() {
    let server = TestServer::with_deadline();
    let mut client = server.connect();
    client
        .write_all(b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\nGET /p3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    for path in ["/p1", "/p2", "/p3"] {
        assert_eq!(read_answer(&mut client).body, format!("GET {} 0", path));
    }
    assert!(closed_by_server(&mut client));
}

#[test]
fn requests_with_bodies_still_work() {
    let server = TestServer::with_deadline();
    let mut client = server.connect();

    // small body: read by tiny_http before the request is handed out
    client
        .write_all(b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    assert_eq!(read_answer(&mut client).body, "POST /small 5");

    // large body, half of it sent only after the head deadline would have passed:
    // the body is read by the handler, with no deadline
    let body = vec![b'z'; 100 * 1024];
    let head = format!(
        "POST /large HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).unwrap();
    client.write_all(&body[..50 * 1024]).unwrap();
    thread::sleep(DEADLINE + Duration::from_millis(500));
    client.write_all(&body[50 * 1024..]).unwrap();
    assert_eq!(read_answer(&mut client).body, "POST /large 102400");

    // chunked body, then the connection is still usable
    client
        .write_all(b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut client).body, "POST /chunked 3");
    client
        .write_all(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut client).body, "GET /after 0");
}

#[test]
fn small_body_that_never_comes_is_bounded_by_deadline() {
    let server = TestServer::with_deadline();
    let mut client = server.connect();
    let start = Instant::now();
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    assert_eq!(read_answer(&mut client).status, 408);
    assert!(closed_by_server(&mut client));
    assert_about_deadline(start.elapsed());
}

#[test]
fn unread_body_that_never_comes_is_bounded_by_deadline() {
    let server = TestServer::with_deadline();
    let mut client = server.connect();
    client
        .write_all(b"POST /noread HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc")
        .unwrap();
    assert_eq!(read_answer(&mut client).body, "POST /noread 0");
    let answered = Instant::now();
    assert!(closed_by_server(&mut client));
    assert_about_deadline(answered.elapsed());

    // and the handler thread is free again
    let mut client = server.connect();
    client
        .write_all(b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut client).body, "GET /next 0");
}

#[test]
fn server_keeps_accepting_after_clients_reset() {
    let server = TestServer::with_deadline();
    for _ in 0..20 {
        let client = server.connect();
        client.shutdown(Shutdown::Both).ok();
    }
    let mut client = server.connect();
    client
        .write_all(b"GET /alive HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut client).body, "GET /alive 0");
}
