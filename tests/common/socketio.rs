//! Socket.IO over a raw WebSocket, packet by packet: for the tests that
//! need to send what the official client never would, or read exactly
//! what the server sent.

use std::net::SocketAddr;

use serde_json::Value;

use super::{RawSocket, TestServer};

pub const PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// A raw Socket.IO peer: sends and reads Engine.IO text packets.
pub struct Peer(pub RawSocket);

impl Peer {
    /// Upgraded on the WebSocket port; returns the peer and the open packet.
    pub fn open(server: &TestServer) -> (Peer, Value) {
        Peer::open_at(server.ws)
    }

    /// Upgraded at `addr` (either port); the peer and the open packet.
    pub fn open_at(addr: SocketAddr) -> (Peer, Value) {
        let mut raw = RawSocket::upgrade(addr, PATH);
        let (_, first) = raw.read_frame().unwrap();
        let first = String::from_utf8(first).unwrap();
        let open = first
            .strip_prefix('0')
            .expect("the open packet comes first");
        (Peer(raw), serde_json::from_str(open).unwrap())
    }

    /// Opened and connected to `/`; returns the peer and its `connected` data.
    pub fn connected(server: &TestServer) -> (Peer, Value) {
        let (mut peer, _) = Peer::open(server);
        peer.send("40");
        assert!(peer.recv().starts_with("40{\"sid\":"));
        let connected = peer.event("connected");
        (peer, connected)
    }

    pub fn send(&mut self, packet: &str) {
        self.0
            .send(&RawSocket::frame(0x81, packet.as_bytes(), true));
    }

    /// The next text packet (server pings `2` included).
    pub fn recv(&mut self) -> String {
        loop {
            let (first, payload) = self.0.read_frame().expect("a packet");
            if first & 0x0f == 0x1 {
                return String::from_utf8(payload).unwrap();
            }
        }
    }

    /// The next packet must be `42["name",data]`; returns data.
    pub fn event(&mut self, name: &str) -> Value {
        let packet = self.recv();
        let array: Value = serde_json::from_str(
            packet
                .strip_prefix("42")
                .unwrap_or_else(|| panic!("{packet}")),
        )
        .unwrap();
        assert_eq!(array[0], name, "{packet}");
        array[1].clone()
    }
}
