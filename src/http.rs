//! The HTTP side's one answering thread: the browser client's files,
//! `/config.json`, `/healthz`, `/api/rooms`, `/metrics`, with CORS, as
//! tiny_http responses. Connection threads (see `accept.rs`) read each
//! request and write its answer; this thread only decides what the answer
//! is. It never touches a socket, so no peer can make it wait.

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::debug;
use serde_json::json;
use tiny_http::{Response, StatusCode};

use crate::auth::Identity;
use crate::config::Origins;
use crate::httpconn::{answer, header, plain, Answer, Head};
use crate::shared::Shared;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/www.rs"));
}

/// The methods every path answers.
const ALLOW: &str = "GET, HEAD, OPTIONS";
/// The Content-Security-Policy of the built-in client's pages.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";
/// How long a connection thread waits for this thread's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Where the client's files come from.
#[derive(Debug, Clone)]
pub(crate) enum Assets {
    /// Compiled into the binary from `www/` (see `build.rs`).
    Embedded,
    /// Read from this folder (canonical path) on every request.
    Dir(PathBuf),
}

/// A file to send: borrowed from the binary, or opened from `--www`.
enum FileBody {
    Embedded(&'static [u8]),
    Disk(File, usize),
}

impl Assets {
    /// The file at the decoded, checked relative path `rel`, if any.
    fn get(&self, rel: &str) -> Option<FileBody> {
        match self {
            Assets::Embedded => embedded::FILES
                .iter()
                .find(|(path, _)| *path == rel)
                .map(|(_, bytes)| FileBody::Embedded(bytes)),
            Assets::Dir(root) => {
                // Canonicalizing resolves symlinks; whatever resolves outside
                // the root is refused, like any `..`.
                let path = root.join(rel).canonicalize().ok()?;
                if !path.starts_with(root) || !path.is_file() {
                    return None;
                }
                let file = File::open(path).ok()?;
                let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
                Some(FileBody::Disk(file, len))
            }
        }
    }
}

/// What the HTTP thread needs besides the shared state.
pub(crate) struct Site {
    pub(crate) shared: Arc<Shared>,
    pub(crate) assets: Assets,
    /// Origins allowed for CORS.
    pub(crate) origins: Origins,
    /// The WebSocket port actually bound, for `/config.json`.
    pub(crate) ws_port: u16,
}

/// A request for the answering thread, and where its answer goes.
pub(crate) struct Job {
    head: Head,
    reply: Sender<Answer>,
    /// When the connection thread gave up waiting (`ANSWER_WAIT`).
    given_up: Instant,
}

/// Why no answer came.
pub(crate) enum NoAnswer {
    /// Not within `ANSWER_WAIT`: the answering thread is behind.
    Busy,
    /// The answering thread has stopped: the server is shutting down.
    Stopped,
}

/// How connection threads reach the answering thread. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Desk {
    jobs: Sender<Option<Job>>,
}

impl Desk {
    /// A desk, and the end the answering thread takes jobs from.
    pub(crate) fn new() -> (Desk, Receiver<Option<Job>>) {
        // Unbounded, yet bounded by the sockets: a connection thread waits
        // for its answer (or gives up) before it asks again, and a job whose
        // asker gave up is dropped unanswered, so a backlog drains itself.
        let (jobs, rx) = crossbeam_channel::unbounded();
        (Desk { jobs }, rx)
    }

    /// The answer to `head`.
    pub(crate) fn ask(&self, head: Head) -> Result<Answer, NoAnswer> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let given_up = Instant::now() + ANSWER_WAIT;
        let job = Job {
            head,
            reply,
            given_up,
        };
        self.jobs.send(Some(job)).map_err(|_| NoAnswer::Stopped)?;
        answer.recv_deadline(given_up).map_err(|e| match e {
            RecvTimeoutError::Timeout => NoAnswer::Busy,
            RecvTimeoutError::Disconnected => NoAnswer::Stopped,
        })
    }

    /// Asks the answering thread to stop.
    pub(crate) fn close(&self) {
        let _ = self.jobs.send(None);
    }
}

/// Answers jobs until the desk is closed or the server stops (the jobs
/// still queued then are dropped: their connections answer `503`).
pub(crate) fn run(jobs: Receiver<Option<Job>>, site: Site) {
    while let Ok(Some(job)) = jobs.recv() {
        if site.shared.stopping() {
            break;
        }
        if Instant::now() >= job.given_up {
            continue;
        }
        let answer = respond(&job.head, &site);
        debug!(
            "{} {} -> {}",
            job.head.method(),
            job.head.target(),
            answer.status_code().0
        );
        let _ = job.reply.send(answer);
    }
    debug!("http thread stopped");
}

/// What a path names.
enum Route {
    Healthz,
    Config,
    Rooms,
    Metrics,
    /// `/socket.io/`: Engine.IO's endpoint (here only for its preflight).
    EngineIo,
    /// The official Socket.IO client bundle, by file name.
    Bundle(&'static str, &'static [u8]),
    /// A file of the client: its checked relative path, and the file.
    File(String, FileBody),
}

impl Route {
    /// The route for `path`, if it names one (a file only if it exists).
    fn find(path: &str, assets: &Assets) -> Option<Route> {
        let route = match path {
            "/healthz" => Route::Healthz,
            "/config.json" => Route::Config,
            "/api/rooms" => Route::Rooms,
            "/metrics" => Route::Metrics,
            "/socket.io/" => Route::EngineIo,
            _ if path.starts_with("/socket.io/") => {
                let name = &path["/socket.io/".len()..];
                let (name, bytes) = embedded::SOCKETIO_FILES.iter().find(|(n, _)| *n == name)?;
                Route::Bundle(name, bytes)
            }
            _ => {
                let rel = relative_path(path)?;
                let file = assets.get(&rel)?;
                Route::File(rel, file)
            }
        };
        Some(route)
    }
}

/// The answer to one request, with CORS headers for an allowed origin.
fn respond(head: &Head, site: &Site) -> Answer {
    let path = head.path();
    let origin = head.header("Origin").filter(|o| site.origins.allows(o));
    let mut answer = match head.method() {
        "GET" | "HEAD" => match Route::find(path, &site.assets) {
            Some(route) => serve(route, head, site),
            None => plain(404, "not found"),
        },
        "OPTIONS" => preflight(head, path, origin, site),
        _ => plain(405, "method not allowed").with_header(header("Allow", ALLOW)),
    };
    answer.add_header(header("Vary", "Origin"));
    if let Some(origin) = origin {
        answer.add_header(header("Access-Control-Allow-Origin", origin));
    }
    answer
}

fn serve(route: Route, head: &Head, site: &Site) -> Answer {
    let shared = &site.shared;
    match route {
        // Long-polling and upgrades never get here (see `accept.rs`).
        Route::EngineIo => plain(400, "not an Engine.IO request"),
        Route::Bundle(name, bytes) => bundle(name, bytes, head),
        Route::Healthz if shared.rooms.healthy() => answer(200, "text/plain", b"ok".to_vec()),
        // A cluster node whose Redis is unreachable: take it out of rotation.
        Route::Healthz => answer(503, "text/plain", b"unavailable".to_vec()),
        Route::Config => {
            let config = json!({"wsPort": site.ws_port, "wsPath": "/ws"});
            answer(200, "application/json", config.to_string().into_bytes())
        }
        Route::Rooms => {
            // v3: with a key, a bearer token, and only the rooms it may join.
            let identity = match &shared.verifier {
                None => None,
                Some(verifier) => match bearer(head) {
                    None => {
                        return plain(
                            401,
                            "unauthenticated: Authorization: Bearer <token> required",
                        )
                        .with_header(header("WWW-Authenticate", "Bearer"))
                    }
                    Some(token) => match verifier.verify(token) {
                        Ok(identity) => Some(identity),
                        Err(refusal) => {
                            let why = format!("{}: {}", refusal.code.as_str(), refusal.message);
                            return plain(401, &why).with_header(header(
                                "WWW-Authenticate",
                                r#"Bearer error="invalid_token""#,
                            ));
                        }
                    },
                },
            };
            rooms(shared, identity.as_ref())
        }
        Route::Metrics => answer(
            200,
            "text/plain; version=0.0.4",
            shared.metrics.render().into_bytes(),
        ),
        Route::File(rel, file) => {
            let content_type = content_type(&rel);
            let (body, len): (Box<dyn Read + Send>, usize) = match file {
                FileBody::Embedded(bytes) => (Box::new(Cursor::new(bytes)), bytes.len()),
                FileBody::Disk(file, len) => (Box::new(file.take(len as u64)), len),
            };
            let mut response = Response::new(StatusCode(200), Vec::new(), body, Some(len), None)
                .with_header(header("Content-Type", content_type))
                .with_header(header("Cache-Control", "no-cache"))
                .with_header(header("X-Content-Type-Options", "nosniff"));
            // The built-in client's own policy; pages from `--www` are the
            // user's, who may well use inline scripts.
            if content_type.starts_with("text/html") && matches!(site.assets, Assets::Embedded) {
                response.add_header(header("Content-Security-Policy", CSP));
            }
            response
        }
    }
}

/// `/api/rooms`: the rooms and their member counts; with `identity`, only
/// those it may join.
fn rooms(shared: &Shared, identity: Option<&Identity>) -> Answer {
    match shared.rooms.list() {
        Ok(rooms) => {
            let rooms: Vec<_> = rooms
                .into_iter()
                .filter(|(name, _)| identity.is_none_or(|i| i.may_join(name)))
                .map(|(name, users)| json!({"name": name, "users": users}))
                .collect();
            let body = json!({ "rooms": rooms }).to_string();
            answer(200, "application/json", body.into_bytes())
        }
        Err(_) => plain(503, "the cluster's Redis is unreachable"),
    }
}

/// The token of an `Authorization: Bearer <token>` header, if any.
fn bearer(head: &Head) -> Option<&str> {
    let (scheme, token) = head.header("Authorization")?.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// A file of the Socket.IO client, as the Socket.IO server sends it: its
/// version as the ETag, and 304 when the browser already has it.
fn bundle(name: &str, bytes: &'static [u8], head: &Head) -> Answer {
    let etag = format!("\"{}\"", embedded::SOCKETIO_VERSION);
    let cached = head.header("If-None-Match").is_some_and(|tags| {
        tags.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag || t == "*")
    });
    let mut answer = if cached {
        let body: Box<dyn Read + Send> = Box::new(std::io::empty());
        Response::new(StatusCode(304), Vec::new(), body, Some(0), None)
    } else {
        let content_type = if name.ends_with(".map") {
            "application/json; charset=utf-8"
        } else {
            "application/javascript; charset=utf-8"
        };
        let body: Box<dyn Read + Send> = Box::new(Cursor::new(bytes));
        Response::new(StatusCode(200), Vec::new(), body, Some(bytes.len()), None)
            .with_header(header("Content-Type", content_type))
    };
    answer.add_header(header("Cache-Control", "public, max-age=0"));
    answer.add_header(header("ETag", &etag));
    answer
}

/// CORS preflight: 204 on a known path; the grant only for an allowed
/// origin. Engine.IO's endpoint also takes POST, with credentials.
fn preflight(head: &Head, path: &str, origin: Option<&str>, site: &Site) -> Answer {
    let Some(route) = Route::find(path, &site.assets) else {
        return plain(404, "not found");
    };
    let mut answer = answer(204, "text/plain; charset=utf-8", Vec::new());
    if origin.is_some() {
        if let Route::EngineIo = route {
            answer.add_header(header(
                "Access-Control-Allow-Methods",
                "GET, HEAD, OPTIONS, POST",
            ));
            answer.add_header(header("Access-Control-Allow-Credentials", "true"));
        } else {
            answer.add_header(header("Access-Control-Allow-Methods", ALLOW));
        }
        if let Some(requested) = head.header("Access-Control-Request-Headers") {
            answer.add_header(header("Access-Control-Allow-Headers", requested));
        }
        answer.add_header(header("Access-Control-Max-Age", "600"));
    }
    answer
}

/// Maps a URL path onto a client file: `/` is `index.html`; percent-escapes
/// are decoded first, then any `.`, `..` or empty segment (a folder) is refused.
fn relative_path(path: &str) -> Option<String> {
    let path = path.strip_prefix('/')?;
    let path = if path.is_empty() { "index.html" } else { path };
    let decoded = String::from_utf8(percent_decode(path)?).ok()?;
    let safe = decoded.split('/').all(|segment| {
        !matches!(segment, "" | "." | "..")
            && !segment.contains(['\\', '\0'])
            && !segment.contains(':')
    });
    safe.then_some(decoded)
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn content_type(rel: &str) -> &'static str {
    let ext = Path::new(rel)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript",
        "css" => "text/css",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answering_thread_drops_given_up_jobs_and_stops_with_the_server() {
        use crate::config::Config;
        use crate::shared::Capacity;
        let shared = Arc::new(Shared::new(
            Config::default(),
            Capacity::for_clients(2),
            Arc::default(),
            Origins::new(Vec::new()),
            None,
            None,
        ));
        let site = Site {
            shared: Arc::clone(&shared),
            assets: Assets::Embedded,
            origins: Origins::new(Vec::new()),
            ws_port: 3001,
        };
        let head = || Head::parse(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
        let (desk, jobs) = Desk::new();
        // A job whose connection has given up waiting, queued first.
        let (reply, stale) = crossbeam_channel::bounded(1);
        let given_up = Instant::now();
        let job = Job {
            head: head(),
            reply,
            given_up,
        };
        desk.jobs.send(Some(job)).unwrap();
        let answering = std::thread::spawn(move || run(jobs, site));
        let Ok(answer) = desk.ask(head()) else {
            panic!("no answer")
        };
        assert_eq!(answer.status_code().0, 200);
        // It was dropped unanswered: its reply channel is closed and empty.
        assert!(matches!(stale.try_recv(), Err(e) if e.is_disconnected()));
        // Once the server stops, the next job ends the thread unanswered.
        assert!(shared.stop());
        assert!(matches!(desk.ask(head()), Err(NoAnswer::Stopped)));
        answering.join().unwrap();
    }

    #[test]
    fn paths_map_into_the_client_and_never_out() {
        assert_eq!(relative_path("/").as_deref(), Some("index.html"));
        assert_eq!(relative_path("/app.js").as_deref(), Some("app.js"));
        assert_eq!(
            relative_path("/img/a%20b.png").as_deref(),
            Some("img/a b.png")
        );
        for bad in [
            "/../etc/passwd",
            "/%2e%2e/x",
            "/a/%2E%2E/%2e%2e/x",
            "/a/./b",
            "/sub/",
            "//x",
            "/%2",
            "/%zz",
            "/a%00b",
            "/..%5cx",
            "/%ff",
        ] {
            assert_eq!(relative_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a/b.JS"), "text/javascript");
        assert_eq!(content_type("x.ico"), "image/x-icon");
        assert_eq!(content_type("README"), "application/octet-stream");
    }

    #[test]
    fn the_client_is_embedded() {
        assert!(Assets::Embedded.get("index.html").is_some());
        assert!(Assets::Embedded.get("nope.html").is_none());
    }

    #[test]
    fn routes_name_the_endpoints_and_existing_files() {
        let find = |path| Route::find(path, &Assets::Embedded);
        assert!(matches!(find("/healthz"), Some(Route::Healthz)));
        assert!(matches!(find("/api/rooms"), Some(Route::Rooms)));
        assert!(matches!(find("/"), Some(Route::File(rel, _)) if rel == "index.html"));
        assert!(find("/api/nope").is_none());
        assert!(matches!(find("/socket.io/"), Some(Route::EngineIo)));
        assert!(matches!(
            find("/socket.io/socket.io.min.js"),
            Some(Route::Bundle(..))
        ));
        assert!(find("/socket.io/socket.io.msgpack.min.js").is_none());
        assert!(find("/socket.io/../index.html").is_none());
    }
}
