//! The HTTP port: the client's files, the JSON and text endpoints, CORS,
//! methods, and what never gets out of `www/`.

mod common;

use common::TestServer;

#[test]
fn the_page_and_its_files_with_content_types() {
    let server = TestServer::start();
    let index = server.get("/");
    assert_eq!(index.status, 200);
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        index.body.contains("<html")
            || index.body.contains("<!doctype")
            || index.body.contains("<!DOCTYPE")
    );
    assert_eq!(server.get("/index.html").body, index.body);
    assert_eq!(
        server.get("/app.js").header("content-type"),
        Some("text/javascript")
    );
    assert_eq!(
        server.get("/style.css").header("content-type"),
        Some("text/css")
    );
    assert_eq!(
        server.get("/favicon.svg").header("content-type"),
        Some("image/svg+xml")
    );
    assert_eq!(
        server.get("/app.js?v=3").status,
        200,
        "the query string is ignored"
    );
}

#[test]
fn config_json_tells_the_page_where_the_websocket_is() {
    let server = TestServer::start();
    let config = server.get("/config.json");
    assert_eq!(config.header("content-type"), Some("application/json"));
    let config: serde_json::Value = serde_json::from_str(&config.body).unwrap();
    assert_eq!(
        config,
        serde_json::json!({"wsPort": server.ws.port(), "wsPath": "/ws"})
    );
}

#[test]
fn healthz_says_ok() {
    let server = TestServer::start();
    let health = server.get("/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    assert_eq!(health.header("content-type"), Some("text/plain"));
}

#[test]
fn metrics_has_every_series_from_the_start_and_counts() {
    let server = TestServer::start();
    let metrics = server.get("/metrics");
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    for name in [
        "roomchat_connections",
        "roomchat_rooms",
        "roomchat_messages_received_total",
        "roomchat_frames_sent_total",
        "roomchat_slow_consumer_disconnects_total",
        "roomchat_errors_total",
    ] {
        assert!(
            metrics.body.lines().any(|l| l.starts_with(name)),
            "{name} missing"
        );
        assert_eq!(server.metric(name), 0, "{name}");
    }
    let mut ann = server.member("ann", "r");
    ann.say("hi");
    assert_eq!(server.metric("roomchat_connections"), 1);
    assert_eq!(server.metric("roomchat_rooms"), 1);
    assert_eq!(server.metric("roomchat_messages_received_total"), 2);
    // connected, joined, ack, chatMessage, ack
    assert_eq!(server.metric("roomchat_frames_sent_total"), 5);
}

#[test]
fn head_is_get_without_the_body() {
    let server = TestServer::start();
    let head =
        server.http_request("HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("2"));
    assert_eq!(head.body, "");
}

#[test]
fn unknown_paths_folders_and_escapes_are_404() {
    let server = TestServer::start();
    for path in [
        "/nope",
        "/index.html/",
        "/..",
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/%2E%2E%2FCargo.toml",
        "/./index.html",
    ] {
        assert_eq!(server.get(path).status, 404, "{path}");
    }
    // v2: `/ws` is a WebSocket endpoint on this port too, with its rules.
    assert_eq!(server.get("/ws").status, 426);
}

#[test]
fn www_dir_serves_files_and_subfolders_but_nothing_outside() {
    let dir = std::env::temp_dir().join(format!("roomchat-www-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("www/sub")).unwrap();
    std::fs::write(dir.join("www/index.html"), "<!doctype html>home").unwrap();
    std::fs::write(dir.join("www/sub/data.json"), "{}").unwrap();
    std::fs::write(dir.join("www/sub/blob.bin"), "x").unwrap();
    std::fs::write(dir.join("secret.txt"), "secret").unwrap();
    let www = dir.join("www");
    let server = TestServer::with(|c| c.www = Some(www));
    let home = server.get("/");
    assert_eq!(home.body, "<!doctype html>home");
    // A page of one's own may well have inline scripts: no CSP on it.
    assert_eq!(home.header("content-security-policy"), None);
    assert_eq!(
        server.get("/sub/data.json").header("content-type"),
        Some("application/json")
    );
    assert_eq!(
        server.get("/sub/blob.bin").header("content-type"),
        Some("application/octet-stream")
    );
    for path in [
        "/sub",
        "/sub/",
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
    ] {
        let answer = server.get(path);
        assert_eq!(answer.status, 404, "{path}");
        assert!(!answer.body.contains("secret"), "{path}");
    }
    drop(server);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn other_methods_are_405_with_allow() {
    let server = TestServer::start();
    for request in [
        "POST / HTTP/1.1",
        "PUT /nope HTTP/1.1",
        "DELETE /healthz HTTP/1.1",
        // The method is checked before the route: a WebSocket path, or
        // Socket.IO's, answers 405 too, not 426 or Engine.IO's 400.
        "PATCH /ws HTTP/1.1",
        "PUT /ws?x=1 HTTP/1.1",
        "DELETE /socket.io/?EIO=4&transport=polling HTTP/1.1",
        "PATCH /socket.io/?EIO=4&transport=websocket HTTP/1.1",
    ] {
        let answer = server.http_request(&format!(
            "{request}\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(answer.status, 405, "{request}");
        assert_eq!(answer.header("allow"), Some("GET, HEAD, OPTIONS"));
    }
}

#[test]
fn cors_echoes_allowed_origins_only() {
    let server = TestServer::start();
    let port = server.http.port();
    for origin in [
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{port}"),
    ] {
        let answer = server.http_request(&format!(
            "GET /api/rooms HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(
            answer.header("access-control-allow-origin"),
            Some(origin.as_str())
        );
        assert_eq!(answer.header("vary"), Some("Origin"));
    }
    let answer = server.http_request("GET /api/rooms HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n");
    assert_eq!(answer.status, 200, "answered as usual");
    assert_eq!(answer.header("access-control-allow-origin"), None);
}

#[test]
fn allowed_origin_replaces_the_defaults_and_star_allows_any() {
    let server = TestServer::with(|c| c.allowed_origins = vec!["https://chat.example".into()]);
    let get = |origin: &str| {
        server
            .http_request(&format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"
            ))
            .header("access-control-allow-origin")
            .map(str::to_owned)
    };
    assert_eq!(
        get("https://chat.example").as_deref(),
        Some("https://chat.example")
    );
    assert_eq!(
        get(&format!("http://localhost:{}", server.http.port())),
        None
    );
    let any = TestServer::with(|c| c.allowed_origins = vec!["*".into()]);
    let answer = any.http_request(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nOrigin: http://a.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("http://a.example"),
        "echoed, not *"
    );
}

#[test]
fn preflight_on_a_known_path() {
    let server = TestServer::start();
    let origin = format!("http://localhost:{}", server.http.port());
    let answer = server.http_request(&format!(
        "OPTIONS /api/rooms HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: GET\r\n\
         Access-Control-Request-Headers: x-token, content-type\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(answer.status, 204);
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some(origin.as_str())
    );
    assert_eq!(
        answer.header("access-control-allow-methods"),
        Some("GET, HEAD, OPTIONS")
    );
    assert_eq!(
        answer.header("access-control-allow-headers"),
        Some("x-token, content-type")
    );
    assert!(answer.header("access-control-max-age").is_some());
    let foreign = server.http_request("OPTIONS /api/rooms HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n");
    assert_eq!(foreign.status, 204);
    assert_eq!(foreign.header("access-control-allow-origin"), None);
    assert_eq!(foreign.header("access-control-allow-methods"), None);
    let unknown =
        server.http_request("OPTIONS /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(unknown.status, 404);
}

#[test]
fn an_oversized_request_head_is_refused() {
    let server = TestServer::start();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(17 * 1024)
    );
    let answer = server.http_request(&big);
    assert!(
        answer.status == 431 || answer.status == 0,
        "got {}",
        answer.status
    );
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = server.http_request(&format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n"
    ));
    assert!(
        answer.status == 431 || answer.status == 0,
        "got {}",
        answer.status
    );
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn an_unfinished_request_head_is_closed_after_the_timeout_and_others_are_served() {
    use std::io::{Read, Write};
    let server = TestServer::with(|c| c.handshake_timeout = std::time::Duration::from_secs(1));
    let mut stalled = std::net::TcpStream::connect(server.http).unwrap();
    stalled.set_read_timeout(Some(common::WAIT)).unwrap();
    stalled.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        server.get("/healthz").status,
        200,
        "served while another request stalls"
    );
    let mut answer = Vec::new();
    let _ = stalled.read_to_end(&mut answer);
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_millis(2500),
        "closed after {elapsed:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[test]
fn an_absolute_form_target_is_served_as_its_path() {
    let server = TestServer::start();
    let answer = server.http_request(&format!(
        "GET http://{}/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        server.http
    ));
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
}

#[test]
fn the_built_in_client_has_its_content_security_policy() {
    let server = TestServer::start();
    let csp = server
        .get("/")
        .header("content-security-policy")
        .map(str::to_owned);
    assert!(csp.is_some_and(|p| p.contains("default-src 'self'")));
}

#[test]
fn the_socket_io_client_is_served_as_socket_io_serves_it() {
    let server = TestServer::start();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/vendor/socket.io-client/");
    for (name, content_type) in [
        ("socket.io.js", "application/javascript; charset=utf-8"),
        ("socket.io.min.js", "application/javascript; charset=utf-8"),
        (
            "socket.io.esm.min.js",
            "application/javascript; charset=utf-8",
        ),
        ("socket.io.js.map", "application/json; charset=utf-8"),
        ("socket.io.min.js.map", "application/json; charset=utf-8"),
        (
            "socket.io.esm.min.js.map",
            "application/json; charset=utf-8",
        ),
    ] {
        let answer = server.get(&format!("/socket.io/{name}?v=1"));
        assert_eq!(answer.status, 200, "{name}");
        assert_eq!(answer.header("content-type"), Some(content_type), "{name}");
        assert_eq!(answer.header("cache-control"), Some("public, max-age=0"));
        assert_eq!(answer.header("etag"), Some("\"4.8.4\""));
        let file = std::fs::read_to_string(format!("{dir}{name}")).unwrap();
        assert_eq!(
            answer.body, file,
            "{name}: the vendored file, byte for byte"
        );
    }
    for tag in ["\"4.8.4\"", "W/\"4.8.4\"", "\"4.8.3\", \"4.8.4\""] {
        let cached = server.http_request(&format!(
            "GET /socket.io/socket.io.min.js HTTP/1.1\r\nIf-None-Match: {tag}\r\n\
             Connection: close\r\n\r\n"
        ));
        assert_eq!((cached.status, cached.body.as_str()), (304, ""), "{tag}");
    }
    let stale = server.http_request(
        "GET /socket.io/socket.io.min.js HTTP/1.1\r\nIf-None-Match: \"4.8.3\"\r\n\
         Connection: close\r\n\r\n",
    );
    assert_eq!(stale.status, 200);
    let head =
        server.http_request("HEAD /socket.io/socket.io.js HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(
        server.get("/socket.io/socket.io.msgpack.min.js").status,
        404
    );
}
