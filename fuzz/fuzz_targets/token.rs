//! Arbitrary bytes as a token, through the checks every way in runs
//! (`authenticate`, the `Authorization` header, Socket.IO's CONNECT,
//! `/api/rooms`): `Verifier::verify`, with an HMAC secret and a P-256
//! public key configured.
//!
//! The first byte picks the input: even, the rest is the token; odd, the
//! rest replaces one part (header, claims or signature, by the byte's
//! value) of a token signed with the right secret, so the fuzzer works
//! past the signature check too. Never a panic; a refusal is
//! `invalid_token` or `token_expired` with a message that never holds the
//! token; an identity keeps the claims' bounds.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use roomchat::auth::{self, TokenRequest, Verifier, MAX_SUB_CHARS};
use roomchat::config::Secret;
use roomchat::protocol::{ErrorCode, MAX_USERNAME_CHARS};
use roomchat::Config;

const SECRET: &str = "fuzz-secret-of-at-least-32-bytes-long";

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let key = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/keys/ec-public.pem");
        let config = Config {
            auth_hmac_secret: Some(Secret::new(SECRET)),
            auth_public_key: Some(key.into()),
            ..Config::default()
        };
        Verifier::from_config(&config).unwrap().unwrap()
    })
}

fn good_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let request = TokenRequest {
            sub: "fuzz",
            name: Some("Fuzz"),
            rooms: Some(vec!["$a".into()]),
            ttl_secs: 3600,
            issuer: None,
            audience: None,
        };
        auth::sign_hs256(&Secret::new(SECRET), &request).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return; // every way in hands the verifier text
    };
    let token = if mode % 2 == 0 {
        rest.to_owned()
    } else {
        let mut parts: Vec<&str> = good_token().split('.').collect();
        parts[usize::from(mode / 2) % 3] = rest;
        parts.join(".")
    };
    match verifier().verify(&token) {
        Ok(identity) => {
            let sub = identity.sub.chars().count();
            assert!((1..=MAX_SUB_CHARS).contains(&sub));
            let name = identity.name.chars().count();
            assert!((1..=MAX_USERNAME_CHARS).contains(&name));
            assert!(!identity.name.chars().any(char::is_control));
        }
        Err(refusal) => {
            assert!(
                matches!(refusal.code, ErrorCode::InvalidToken | ErrorCode::TokenExpired),
                "{refusal:?}"
            );
            // The message is a `&'static str`: it cannot carry the token.
            // (A substring check here only found tokens made of a
            // message's own words, e.g. "n is not a JWT (three parts)".)
        }
    }
});
