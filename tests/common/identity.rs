//! Tokens for the identity tests (v3): signed here with the test keys, as
//! an application's login would sign them, and clients that present them.

use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use roomchat::config::Secret;
use roomchat::Config;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;

use super::{Client, WAIT};

/// The HMAC secret every identity test server is given.
pub const SECRET: &str = "test-secret-of-at-least-32-bytes-0123456789";

/// A server configuration with the test secret.
pub fn with_secret(config: &mut Config) {
    config.auth_hmac_secret = Some(Secret::new(SECRET));
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `claims` signed with HS256 and the test secret.
pub fn sign(claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
}

/// A token for `sub`, valid for an hour, with extra claims merged in.
pub fn token(sub: &str, extra: Value) -> String {
    let mut claims = json!({"sub": sub, "exp": now() + 3600, "iat": now()});
    if let Value::Object(extra) = extra {
        claims.as_object_mut().unwrap().extend(extra);
    }
    sign(&claims)
}

/// `claims` signed with a PEM private key of the test key pairs.
pub fn sign_with(alg: Algorithm, private_pem: &str, claims: &Value) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap(),
        other => panic!("{other:?}"),
    };
    jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
}

/// The path of one of the test keys.
pub fn key_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

impl Client {
    /// Connects with `Authorization: Bearer <token>` on the upgrade; the
    /// `connected` frame is read and returned.
    pub fn connect_bearer(url: &str, token: &str) -> (Client, Value) {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let addr = url.trim_start_matches("ws://").split('/').next().unwrap();
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (ws, _) = tungstenite::client(request, stream).expect("handshake");
        let mut client = Client::from_socket(ws);
        let connected = client.expect("connected");
        client.id = connected["id"].as_str().unwrap().to_owned();
        (client, connected)
    }

    /// Sends `authenticate` with `token`; the reply (ack or error).
    pub fn authenticate(&mut self, token: &str) -> Value {
        self.request("authenticate", json!({ "token": token })).1
    }

    /// Authenticates, asserting success; the ack's data.
    pub fn prove(&mut self, token: &str) -> Value {
        let reply = self.authenticate(token);
        assert_eq!(reply["event"], "ack", "authenticate failed: {reply}");
        reply["data"].clone()
    }

    /// Joins `room` without a username (the token's name is used); the
    /// `joined` data.
    pub fn join_verified(&mut self, room: &str) -> Value {
        let (frames, reply) = self.request("joinRoom", json!({ "room": room }));
        assert_eq!(reply["event"], "ack", "join failed: {reply}");
        frames
            .into_iter()
            .find(|f| f["event"] == "joined")
            .expect("joined before the ack")["data"]
            .clone()
    }
}
