//! Engine.IO long-polling spoken by hand over raw HTTP: a session's GETs
//! and POSTs, for the tests that need a polling client a library would
//! hide.

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::Value;

use super::{raw_http, HttpResponse, TestServer, WAIT};

/// One long-polling session, spoken by hand.
pub struct Polling {
    pub http: SocketAddr,
    pub sid: String,
}

impl Polling {
    /// Opens a session; returns it and the open packet.
    pub fn open(server: &TestServer) -> (Polling, Value) {
        let answer = get(server.http, "/socket.io/?EIO=4&transport=polling&t=abc");
        assert_eq!(answer.status, 200, "{answer:?}");
        let open: Value = serde_json::from_str(answer.body.strip_prefix('0').unwrap()).unwrap();
        let sid = open["sid"].as_str().unwrap().to_owned();
        (
            Polling {
                http: server.http,
                sid,
            },
            open,
        )
    }

    /// A session that has joined the main namespace (its `40` and
    /// `connected` read).
    pub fn connected(server: &TestServer) -> Polling {
        let (polling, _) = Polling::open(server);
        assert_eq!(polling.post("40").body, "ok");
        let packets = polling.packets();
        assert!(packets[0].starts_with(r#"40{"sid":"#), "{packets:?}");
        assert!(packets[1].starts_with(r#"42["connected","#), "{packets:?}");
        polling
    }

    pub fn url(&self) -> String {
        format!("/socket.io/?EIO=4&transport=polling&sid={}", self.sid)
    }

    pub fn get(&self) -> HttpResponse {
        get(self.http, &self.url())
    }

    /// A GET's payload, split into its packets.
    pub fn packets(&self) -> Vec<String> {
        let answer = self.get();
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body.split('\u{1e}').map(str::to_owned).collect()
    }

    /// Polls until packets matching `want` came (bounded), returning every
    /// packet seen on the way.
    pub fn until(&self, want: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let packets = self.packets();
            let done = packets.iter().any(|p| want(p));
            seen.extend(packets);
            if done {
                return seen;
            }
        }
        panic!("not seen within {WAIT:?}: {seen:?}");
    }

    pub fn post(&self, body: &str) -> HttpResponse {
        post(self.http, &self.url(), body)
    }
}

pub fn get(addr: SocketAddr, target: &str) -> HttpResponse {
    raw_http(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn post(addr: SocketAddr, target: &str, body: &str) -> HttpResponse {
    let request = format!(
        "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_http(addr, request.as_bytes())
}

/// An Engine.IO error answer: its status and code.
pub fn engine_error(answer: &HttpResponse) -> (u16, u64) {
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&answer.body).unwrap();
    (answer.status, body["code"].as_u64().unwrap())
}

/// A `42["name",data]` packet's name and data.
pub fn event(packet: &str) -> (String, Value) {
    let array: Value = serde_json::from_str(packet.strip_prefix("42").unwrap()).unwrap();
    (array[0].as_str().unwrap().to_owned(), array[1].clone())
}
