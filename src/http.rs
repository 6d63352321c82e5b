//! The HTTP side, on tiny_http: the browser client's files, `/config.json`,
//! `/healthz`, `/api/rooms`, `/metrics`, with CORS. One thread answers
//! every request in turn; the answers are small and never wait on a room.

use std::borrow::Cow;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{debug, warn};
use serde_json::json;
use tiny_http::{Header, Method, Request, Response, StatusCode};

use crate::config::Origins;
use crate::shared::Shared;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/www.rs"));
}

type Body = Cursor<Cow<'static, [u8]>>;

/// Where the client's files come from.
#[derive(Debug, Clone)]
pub(crate) enum Assets {
    /// Compiled into the binary from `www/` (see `build.rs`).
    Embedded,
    /// Read from this folder (canonical path) on every request.
    Dir(PathBuf),
}

impl Assets {
    /// The file at the decoded, checked relative path `rel`, if any.
    fn get(&self, rel: &str) -> Option<Cow<'static, [u8]>> {
        match self {
            Assets::Embedded => embedded::FILES
                .iter()
                .find(|(path, _)| *path == rel)
                .map(|(_, bytes)| Cow::Borrowed(*bytes)),
            Assets::Dir(root) => {
                // Canonicalizing resolves symlinks; whatever resolves outside
                // the root is refused, like any `..`.
                let path = root.join(rel).canonicalize().ok()?;
                if !path.starts_with(root) || !path.is_file() {
                    return None;
                }
                fs::read(path).ok().map(Cow::Owned)
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

/// What a path names.
#[derive(Debug)]
enum Route {
    Healthz,
    Config,
    Rooms,
    Metrics,
    /// A file of the client: its checked relative path, and its bytes.
    File(String, Cow<'static, [u8]>),
}

impl Route {
    /// The route for `path`, if it names one (a file only if it exists).
    fn find(path: &str, assets: &Assets) -> Option<Route> {
        let route = match path {
            "/healthz" => Route::Healthz,
            "/config.json" => Route::Config,
            "/api/rooms" => Route::Rooms,
            "/metrics" => Route::Metrics,
            _ => {
                let rel = relative_path(path)?;
                let bytes = assets.get(&rel)?;
                Route::File(rel, bytes)
            }
        };
        Some(route)
    }
}

/// Answers requests until the server is unblocked by `shutdown`.
pub(crate) fn run(server: Arc<tiny_http::Server>, site: Site) {
    for request in server.incoming_requests() {
        respond(request, &site);
    }
    debug!("http loop stopped");
}

fn respond(request: Request, site: &Site) {
    let path = request_path(request.url()).to_owned();
    let origin = header(&request, "Origin").filter(|o| site.origins.allows(o));
    let mut response = match request.method() {
        Method::Get | Method::Head => match Route::find(&path, &site.assets) {
            Some(route) => answer(route, site),
            None => plain(404, "not found"),
        },
        Method::Options => preflight(&request, &path, origin.as_deref(), site),
        _ => plain(405, "method not allowed").with_header(h("Allow", "GET, HEAD, OPTIONS")),
    };
    response.add_header(h("Vary", "Origin"));
    if let Some(origin) = origin {
        response.add_header(h("Access-Control-Allow-Origin", &origin));
    }
    debug!(
        "{} {} -> {}",
        request.method(),
        request.url(),
        response.status_code().0
    );
    // tiny_http reads off an unread body when the request is dropped, which
    // a client may drag out until the head deadline; the one thread that
    // answers everyone must not wait for that, so such a request (we read no
    // bodies: they only come with a 405) is answered on a thread of its own.
    if has_body(&request) {
        let spawned = std::thread::Builder::new()
            .name("http-body".into())
            .stack_size(64 * 1024)
            .spawn(move || deliver(request, response));
        if let Err(e) = spawned {
            warn!("cannot start a thread to answer a request with a body: {e}");
        }
    } else {
        deliver(request, response);
    }
}

fn deliver(request: Request, response: Response<Body>) {
    if let Err(e) = request.respond(response) {
        debug!("http answer not delivered: {e}");
    }
}

fn has_body(request: &Request) -> bool {
    header(request, "Transfer-Encoding").is_some()
        || header(request, "Content-Length").is_some_and(|len| len.trim() != "0")
}

/// The path of a request target: the query dropped, and the scheme and
/// authority of an absolute-form target (`GET http://host/x`) too.
fn request_path(target: &str) -> &str {
    let target = target.split_once('?').map_or(target, |(path, _)| path);
    match target.split_once("://") {
        Some((scheme, rest)) if !scheme.contains('/') => rest.find('/').map_or("/", |i| &rest[i..]),
        _ => target,
    }
}

fn answer(route: Route, site: &Site) -> Response<Body> {
    let shared = &site.shared;
    match route {
        Route::Healthz => body(200, "text/plain", b"ok".to_vec()),
        Route::Config => {
            let config = json!({"wsPort": site.ws_port, "wsPath": "/ws"});
            body(200, "application/json", config.to_string().into_bytes())
        }
        Route::Rooms => {
            let rooms: Vec<_> = shared
                .registry
                .rooms()
                .into_iter()
                .map(|(name, users)| json!({"name": name, "users": users}))
                .collect();
            body(
                200,
                "application/json",
                json!({ "rooms": rooms }).to_string().into_bytes(),
            )
        }
        Route::Metrics => body(
            200,
            "text/plain; version=0.0.4",
            shared.metrics.render().into_bytes(),
        ),
        Route::File(rel, bytes) => {
            let content_type = content_type(&rel);
            let len = bytes.len();
            let mut response = Response::new(
                StatusCode(200),
                Vec::new(),
                Cursor::new(bytes),
                Some(len),
                None,
            )
            .with_header(h("Content-Type", content_type))
            .with_header(h("Cache-Control", "no-cache"))
            .with_header(h("X-Content-Type-Options", "nosniff"));
            if content_type.starts_with("text/html") {
                response.add_header(h(
                    "Content-Security-Policy",
                    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                     object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
                ));
            }
            response
        }
    }
}

/// CORS preflight: 204 on a known path; the grant only for an allowed origin.
fn preflight(request: &Request, path: &str, origin: Option<&str>, site: &Site) -> Response<Body> {
    if Route::find(path, &site.assets).is_none() {
        return plain(404, "not found");
    }
    let mut response = body(204, "text/plain; charset=utf-8", Vec::new());
    if origin.is_some() {
        response.add_header(h("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS"));
        if let Some(requested) = header(request, "Access-Control-Request-Headers") {
            response.add_header(h("Access-Control-Allow-Headers", &requested));
        }
        response.add_header(h("Access-Control-Max-Age", "600"));
    }
    response
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

fn body(status: u16, content_type: &'static str, bytes: Vec<u8>) -> Response<Body> {
    let len = bytes.len();
    Response::new(
        StatusCode(status),
        Vec::new(),
        Cursor::new(Cow::Owned(bytes)),
        Some(len),
        None,
    )
    .with_header(h("Content-Type", content_type))
}

fn plain(status: u16, text: &str) -> Response<Body> {
    body(
        status,
        "text/plain; charset=utf-8",
        format!("{text}\n").into_bytes(),
    )
}

fn header(request: &Request, name: &'static str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_owned())
}

fn h(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|()| {
        warn!("dropping a header value that is not valid: {name}: {value:?}");
        Header::from_bytes(name.as_bytes(), &b""[..]).expect("an empty value is valid")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn request_targets_in_origin_and_absolute_form() {
        assert_eq!(request_path("/a/b?x=1"), "/a/b");
        assert_eq!(request_path("http://h:3000/healthz?x"), "/healthz");
        assert_eq!(request_path("http://h"), "/");
        assert_eq!(request_path("/x://y"), "/x://y");
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
}
