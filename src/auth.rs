//! Identity (v3): who a client is, proven by a signed token (a JWT). The
//! keys come from the flags; a token is checked once per authentication
//! (never per message) and becomes an [`Identity`], or a refusal that says
//! why without ever repeating the token. Pure: no I/O once built.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{Config, Secret, MAX_LEEWAY_SECS};
use crate::protocol::{self, ErrorCode, MAX_USERNAME_CHARS};

/// Largest token accepted, in bytes. An RS256 token with a 4096-bit key and
/// a long `rooms` list stays well below; anything larger is refused before
/// a byte of it is decoded, so a peer cannot make the server parse
/// megabytes per attempt.
pub const MAX_TOKEN_BYTES: usize = 8192;
/// Longest `sub`, in characters.
pub const MAX_SUB_CHARS: usize = 64;
/// Shortest HMAC secret, in bytes (the protocol's rule: 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// A verified user: what a token proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub`: the user's id, what `user` says on the wire.
    pub sub: String,
    /// `name`, or `sub`: the display name everyone sees.
    pub name: String,
    /// `rooms`: the only rooms this token may join; none: every room not
    /// starting with `$`.
    pub rooms: Option<HashSet<String>>,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
}

impl Identity {
    /// Whether this token may join `room` (its trimmed name).
    pub fn may_join(&self, room: &str) -> bool {
        match &self.rooms {
            Some(rooms) => rooms.contains(room),
            None => !room.starts_with('$'),
        }
    }
}

/// Why a token was refused: `invalid_token` or `token_expired`, and a
/// message that names the check (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: &'static str,
}

impl Refusal {
    fn invalid(message: &'static str) -> Refusal {
        Refusal {
            code: ErrorCode::InvalidToken,
            message,
        }
    }
}

/// Why the keys in the flags cannot be used; the server does not start.
#[derive(Debug)]
pub enum KeyError {
    ShortSecret,
    Unreadable(std::path::PathBuf, std::io::Error),
    NotAPublicKey(std::path::PathBuf),
    BadLeeway,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::ShortSecret => write!(
                f,
                "the HMAC secret (--auth-hmac-secret, CHAT_AUTH_HMAC_SECRET) must be at least \
                 {MIN_SECRET_BYTES} bytes: a shorter one can be guessed"
            ),
            KeyError::Unreadable(path, e) => {
                write!(f, "cannot read --auth-public-key {}: {e}", path.display())
            }
            KeyError::NotAPublicKey(path) => write!(
                f,
                "--auth-public-key {} holds no RSA or EC public key in PEM",
                path.display()
            ),
            KeyError::BadLeeway => write!(f, "--auth-leeway is at most {MAX_LEEWAY_SECS} seconds"),
        }
    }
}

impl std::error::Error for KeyError {}

/// The server's keys and the claims it requires: built once at startup.
pub struct Verifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ec: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .field("ec", &self.ec.is_some())
            .finish_non_exhaustive()
    }
}

/// The claims roomchat reads, each kept as JSON until checked, so that a
/// wrong type gets a message that names the claim.
#[derive(Deserialize)]
struct Claims {
    sub: Option<Value>,
    name: Option<Value>,
    rooms: Option<Value>,
    exp: Option<Value>,
    iat: Option<Value>,
}

impl Verifier {
    /// The verifier the flags ask for: none without a key (demo mode).
    pub fn from_config(config: &Config) -> Result<Option<Verifier>, KeyError> {
        if config.auth_leeway > MAX_LEEWAY_SECS {
            return Err(KeyError::BadLeeway);
        }
        let hmac = match &config.auth_hmac_secret {
            Some(secret) if secret.expose().len() < MIN_SECRET_BYTES => {
                return Err(KeyError::ShortSecret)
            }
            Some(secret) => Some(DecodingKey::from_secret(secret.expose())),
            None => None,
        };
        let (mut rsa, mut ec) = (None, None);
        if let Some(path) = &config.auth_public_key {
            let pem = read_key(path)?;
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                rsa = Some(key);
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                ec = Some(key);
            } else {
                return Err(KeyError::NotAPublicKey(path.clone()));
            }
        }
        if hmac.is_none() && rsa.is_none() && ec.is_none() {
            return Ok(None);
        }
        Ok(Some(Verifier {
            hmac,
            rsa,
            ec,
            issuer: config.auth_issuer.clone(),
            audience: config.auth_audience.clone(),
            leeway: config.auth_leeway,
        }))
    }

    /// The leeway on `exp`, `nbf` and `iat`, in seconds.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Checks `token` now.
    pub fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        self.verify_at(token, unix_now())
    }

    /// Checks `token` as if the time were `now` (seconds since the epoch).
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Identity, Refusal> {
        if token.is_empty() {
            return Err(Refusal::invalid("the token is empty"));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::invalid("the token is larger than 8192 bytes"));
        }
        if token.bytes().filter(|&b| b == b'.').count() != 2 {
            return Err(Refusal::invalid("the token is not a JWT (three parts)"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::Json(_) if alg_is_unknown(token) => {
                Refusal::invalid("alg must be HS256, RS256 or ES256")
            }
            _ => Refusal::invalid("the token's header cannot be read"),
        })?;
        // The key is chosen by the token's alg, among those configured:
        // an HMAC token is never checked against a public key's bytes.
        let key = match header.alg {
            Algorithm::HS256 => self.hmac.as_ref(),
            Algorithm::RS256 => self.rsa.as_ref(),
            Algorithm::ES256 => self.ec.as_ref(),
            _ => return Err(Refusal::invalid("alg must be HS256, RS256 or ES256")),
        }
        .ok_or(Refusal::invalid(
            "the server has no key for the token's alg",
        ))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        let mut required = vec!["exp", "sub"];
        validation.validate_nbf = true;
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // Without --auth-audience, an `aud` is not ours to judge.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        // jsonwebtoken compares with its own clock; `now` is for the
        // claims checked here (and the tests that move it).
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| refusal(e.kind()))?;
        claims(data.claims, now, self.leeway)
    }

    /// The identity's deadline: `exp` plus the leeway, seconds since the epoch.
    pub fn expires_at(&self, identity: &Identity) -> u64 {
        identity.exp.saturating_add(self.leeway)
    }
}

/// Whether the header names an algorithm jsonwebtoken does not know (`none`
/// among them), as opposed to a header that is not JSON at all.
fn alg_is_unknown(token: &str) -> bool {
    use base64_header::decode;
    let Some(header) = token.split('.').next().and_then(decode) else {
        return false;
    };
    serde_json::from_slice::<Value>(&header)
        .ok()
        .and_then(|h| h.get("alg").cloned())
        .is_some()
}

/// A few lines of base64url, so the header's alg can be named in a refusal
/// without a second base64 crate.
mod base64_header {
    pub(super) fn decode(text: &str) -> Option<Vec<u8>> {
        if text.len() > 1024 {
            return None;
        }
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0);
        for b in text.bytes() {
            let v = match b {
                b'A'..=b'Z' => b - b'A',
                b'a'..=b'z' => b - b'a' + 26,
                b'0'..=b'9' => b - b'0' + 52,
                b'-' => 62,
                b'_' => 63,
                _ => return None,
            };
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        Some(out)
    }
}

/// The library's verdict as the protocol's refusal.
fn refusal(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::ExpiredSignature => Refusal {
            code: ErrorCode::TokenExpired,
            message: "the token has expired",
        },
        ErrorKind::ImmatureSignature => Refusal::invalid("the token is not valid yet (nbf)"),
        ErrorKind::InvalidSignature => Refusal::invalid("the token's signature is wrong"),
        ErrorKind::InvalidIssuer => Refusal::invalid("the token's iss is not this server's issuer"),
        ErrorKind::InvalidAudience => Refusal::invalid("the token's aud is not this server"),
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => Refusal::invalid("the token has no exp (a number of seconds)"),
            "sub" => Refusal::invalid("the token has no sub"),
            "iss" => Refusal::invalid("the token has no iss"),
            "aud" => Refusal::invalid("the token has no aud"),
            _ => Refusal::invalid("the token lacks a required claim"),
        },
        ErrorKind::InvalidClaimFormat(claim) => match claim.as_str() {
            "exp" => Refusal::invalid("exp must be a number of seconds"),
            "nbf" => Refusal::invalid("nbf must be a number of seconds"),
            _ => Refusal::invalid("a claim has the wrong type"),
        },
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            Refusal::invalid("alg must be HS256, RS256 or ES256")
        }
        ErrorKind::InvalidKeyFormat | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
            Refusal::invalid("the token's signature is wrong")
        }
        ErrorKind::Json(_) => Refusal::invalid("the token's claims are not a JSON object"),
        _ => Refusal::invalid("the token cannot be read"),
    }
}

/// The claims the library does not check: `sub`, `name`, `rooms`, `iat`,
/// and `exp` read back.
fn claims(claims: Claims, now: u64, leeway: u64) -> Result<Identity, Refusal> {
    let sub = match claims.sub {
        Some(Value::String(s))
            if (1..=MAX_SUB_CHARS).contains(&s.chars().count())
                && !s.chars().any(char::is_control) =>
        {
            s
        }
        _ => {
            return Err(Refusal::invalid(
                "sub must be a string of 1 to 64 characters, no control characters",
            ))
        }
    };
    let exp = claims
        .exp
        .as_ref()
        .and_then(seconds)
        .ok_or(Refusal::invalid("exp must be a number of seconds"))?;
    if let Some(iat) = claims.iat {
        let iat = seconds(&iat).ok_or(Refusal::invalid("iat must be a number of seconds"))?;
        if iat > now.saturating_add(leeway) {
            return Err(Refusal::invalid("the token was issued in the future (iat)"));
        }
    }
    let name = match claims.name {
        None | Some(Value::Null) => sub.clone(),
        Some(Value::String(name)) => protocol::valid_username(&name)
            .ok_or(Refusal::invalid(
                "name must be 1 to 32 characters, no control characters",
            ))?
            .to_owned(),
        Some(_) => return Err(Refusal::invalid("name must be a string")),
    };
    // `sub` as the default name is held to the username's rules too, so
    // that what others see is always a valid username.
    if protocol::valid_username(&name).is_none() {
        return Err(Refusal::invalid(
            "without a name claim, sub must be a valid username (1 to 32 characters)",
        ));
    }
    debug_assert!(name.chars().count() <= MAX_USERNAME_CHARS);
    let rooms = match claims.rooms {
        None | Some(Value::Null) => None,
        Some(Value::Array(rooms)) => Some(
            rooms
                .into_iter()
                .map(|r| match r {
                    Value::String(r) => Ok(r),
                    _ => Err(Refusal::invalid("rooms must be an array of room names")),
                })
                .collect::<Result<HashSet<_>, _>>()?,
        ),
        Some(_) => return Err(Refusal::invalid("rooms must be an array of room names")),
    };
    Ok(Identity {
        sub,
        name,
        rooms,
        exp,
    })
}

/// A NumericDate: whole seconds (a fraction is dropped), not negative.
fn seconds(value: &Value) -> Option<u64> {
    let n = value.as_number()?;
    n.as_u64().or_else(|| {
        let f = n.as_f64()?;
        (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then_some(f as u64)
    })
}

fn read_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError::Unreadable(path.to_owned(), e))
}

/// Seconds since the epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What `roomchat token` signs.
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    pub sub: &'a str,
    pub name: Option<&'a str>,
    pub rooms: Option<Vec<String>>,
    pub ttl_secs: u64,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
}

/// An HS256 token for `request`, signed with `secret` (for `roomchat
/// token`, demos and tests).
pub fn sign_hs256(secret: &Secret, request: &TokenRequest<'_>) -> Result<String, KeyError> {
    if secret.expose().len() < MIN_SECRET_BYTES {
        return Err(KeyError::ShortSecret);
    }
    let now = unix_now();
    let mut claims = serde_json::json!({
        "sub": request.sub,
        "iat": now,
        "exp": now + request.ttl_secs,
    });
    let map = claims.as_object_mut().expect("built as an object");
    if let Some(name) = request.name {
        map.insert("name".into(), name.into());
    }
    if let Some(rooms) = &request.rooms {
        map.insert("rooms".into(), rooms.clone().into());
    }
    if let Some(iss) = request.issuer {
        map.insert("iss".into(), iss.into());
    }
    if let Some(aud) = request.audience {
        map.insert("aud".into(), aud.into());
    }
    let key = EncodingKey::from_secret(secret.expose());
    Ok(
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
            .expect("HS256 signs any JSON claims"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        let config = Config {
            auth_hmac_secret: Some(Secret::new(SECRET)),
            ..Config::default()
        };
        Verifier::from_config(&config).unwrap().unwrap()
    }

    fn hs256(claims: &Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
    }

    fn refused(claims: Value) -> &'static str {
        verifier().verify(&hs256(&claims)).unwrap_err().message
    }

    fn later() -> u64 {
        unix_now() + 3600
    }

    #[test]
    fn a_good_token_gives_its_identity() {
        let id = verifier()
            .verify(&hs256(
                &json!({"sub": "u1", "exp": later(), "name": " Ann ", "rooms": ["$a", "b"]}),
            ))
            .unwrap();
        assert_eq!((id.sub.as_str(), id.name.as_str()), ("u1", "Ann"));
        assert!(id.may_join("$a") && id.may_join("b") && !id.may_join("c"));
        let plain = verifier()
            .verify(&hs256(&json!({"sub": "u2", "exp": later()})))
            .unwrap();
        assert_eq!(plain.name, "u2", "name defaults to sub");
        assert!(plain.may_join("lobby") && !plain.may_join("$staff"));
    }

    #[test]
    fn each_claim_check_refuses() {
        let exp = later();
        assert!(refused(json!({"sub": "u"})).starts_with("the token has no exp"));
        assert_eq!(refused(json!({"exp": exp})), "the token has no sub");
        assert!(refused(json!({"sub": "u", "exp": "soon"})).starts_with("the token has no exp"));
        assert_eq!(
            refused(json!({"sub": 7, "exp": exp})),
            "the token has no sub",
            "not a string"
        );
        for sub in [json!(""), json!("x".repeat(65)), json!("a\u{7}")] {
            assert!(refused(json!({"sub": sub, "exp": exp})).starts_with("sub must"));
        }
        assert!(refused(json!({"sub": "u", "exp": exp, "name": "   "})).starts_with("name must"));
        assert!(refused(json!({"sub": "u", "exp": exp, "name": 5})).starts_with("name must"));
        assert!(
            refused(json!({"sub": "x".repeat(40), "exp": exp})).starts_with("without a name"),
            "a sub too long for a username needs a name"
        );
        assert!(refused(json!({"sub": "u", "exp": exp, "rooms": "a"})).starts_with("rooms"));
        assert!(refused(json!({"sub": "u", "exp": exp, "rooms": [1]})).starts_with("rooms"));
        assert_eq!(
            refused(json!({"sub": "u", "exp": exp, "nbf": unix_now() + 600})),
            "the token is not valid yet (nbf)"
        );
        assert_eq!(
            refused(json!({"sub": "u", "exp": exp, "iat": unix_now() + 600})),
            "the token was issued in the future (iat)"
        );
        let expired = verifier()
            .verify(&hs256(&json!({"sub": "u", "exp": unix_now() - 60})))
            .unwrap_err();
        assert_eq!(expired.code, ErrorCode::TokenExpired);
    }

    #[test]
    fn the_leeway_is_honoured_and_bounded() {
        let v = verifier();
        assert_eq!(v.leeway(), Config::default().auth_leeway);
        let just_expired = hs256(&json!({"sub": "u", "exp": unix_now() - 1}));
        assert!(v.verify(&just_expired).is_ok(), "within the leeway");
        let config = Config {
            auth_hmac_secret: Some(Secret::new(SECRET)),
            auth_leeway: 31,
            ..Config::default()
        };
        assert!(matches!(
            Verifier::from_config(&config),
            Err(KeyError::BadLeeway)
        ));
    }

    #[test]
    fn issuer_and_audience_must_match_when_configured() {
        let config = Config {
            auth_hmac_secret: Some(Secret::new(SECRET)),
            auth_issuer: Some("https://id.example".into()),
            auth_audience: Some("chat".into()),
            ..Config::default()
        };
        let v = Verifier::from_config(&config).unwrap().unwrap();
        let exp = later();
        let good = json!({"sub": "u", "exp": exp, "iss": "https://id.example", "aud": "chat"});
        assert!(v.verify(&hs256(&good)).is_ok());
        let check = |claims: Value| v.verify(&hs256(&claims)).unwrap_err().message;
        assert_eq!(
            check(json!({"sub": "u", "exp": exp, "aud": "chat"})),
            "the token has no iss"
        );
        assert_eq!(
            check(json!({"sub": "u", "exp": exp, "iss": "https://id.example"})),
            "the token has no aud"
        );
        assert_eq!(
            check(json!({"sub": "u", "exp": exp, "iss": "other", "aud": "chat"})),
            "the token's iss is not this server's issuer"
        );
        assert_eq!(
            check(json!({"sub": "u", "exp": exp, "iss": "https://id.example", "aud": "x"})),
            "the token's aud is not this server"
        );
        // Without --auth-audience an aud is not checked.
        assert!(verifier()
            .verify(&hs256(&json!({"sub": "u", "exp": exp, "aud": "anything"})))
            .is_ok());
    }

    #[test]
    fn forged_truncated_and_oversized_tokens_are_refused() {
        let v = verifier();
        let good = hs256(&json!({"sub": "u", "exp": later()}));
        let other = {
            let key = EncodingKey::from_secret(b"another secret of at least 32 bytes!");
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &json!({"sub": "u", "exp": later()}),
                &key,
            )
            .unwrap()
        };
        assert_eq!(
            v.verify(&other).unwrap_err().message,
            "the token's signature is wrong"
        );
        for cut in [1, good.len() / 2, good.len() - 1] {
            assert!(v.verify(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(v.verify("").is_err());
        assert!(v.verify("a.b.c").is_err());
        let huge = format!("{good}{}", "A".repeat(MAX_TOKEN_BYTES));
        assert_eq!(
            v.verify(&huge).unwrap_err().message,
            "the token is larger than 8192 bytes"
        );
        // A payload swapped under a good signature.
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged_claims = hs256(&json!({"sub": "admin", "exp": later()}));
        parts[1] = forged_claims.split('.').nth(1).unwrap();
        assert!(v.verify(&parts.join(".")).is_err());
    }

    /// `{"alg":"none"}` and friends, built by hand: no library signs them.
    fn unsigned(header: &str, claims: &Value) -> String {
        let b64 = |bytes: &[u8]| {
            const ABC: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
                    << (8 * (3 - chunk.len()));
                for i in 0..=chunk.len() {
                    out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            out
        };
        format!(
            "{}.{}.",
            b64(header.as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let v = verifier();
        let claims = json!({"sub": "u", "exp": later()});
        for alg in ["none", "None", "HS384", "HS512", "PS256", "EdDSA", "RS512"] {
            let token = unsigned(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#), &claims);
            assert_eq!(
                v.verify(&token).unwrap_err().message,
                "alg must be HS256, RS256 or ES256",
                "{alg}"
            );
        }
        let no_key = unsigned(r#"{"alg":"RS256"}"#, &claims);
        assert_eq!(
            v.verify(&no_key).unwrap_err().message,
            "the server has no key for the token's alg"
        );
    }

    #[test]
    fn an_hmac_token_is_never_checked_against_the_public_key() {
        // The classic confusion: an attacker signs HS256 with the public
        // key's PEM as the secret. The server only has the public key.
        let dir = std::env::temp_dir().join(format!("roomchat-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ec.pem");
        std::fs::write(&path, TEST_EC_PUBLIC).unwrap();
        let config = Config {
            auth_public_key: Some(path.clone()),
            ..Config::default()
        };
        let v = Verifier::from_config(&config).unwrap().unwrap();
        let key = EncodingKey::from_secret(TEST_EC_PUBLIC.as_bytes());
        let claims = json!({"sub": "u", "exp": later()});
        let forged = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        assert_eq!(
            v.verify(&forged).unwrap_err().message,
            "the server has no key for the token's alg"
        );
        let es = EncodingKey::from_ec_pem(TEST_EC_PRIVATE.as_bytes()).unwrap();
        let good = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &es).unwrap();
        assert_eq!(v.verify(&good).unwrap().sub, "u");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_short_secret_or_a_bad_key_file_stops_the_start() {
        let short = Config {
            auth_hmac_secret: Some(Secret::new("too short")),
            ..Config::default()
        };
        let e = Verifier::from_config(&short).unwrap_err();
        assert!(matches!(e, KeyError::ShortSecret));
        assert!(!e.to_string().contains("too short"), "never the secret");
        assert!(Verifier::from_config(&Config::default()).unwrap().is_none());
        let missing = Config {
            auth_public_key: Some("/nonexistent/key.pem".into()),
            ..Config::default()
        };
        assert!(matches!(
            Verifier::from_config(&missing),
            Err(KeyError::Unreadable(..))
        ));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new(SECRET);
        assert!(!format!("{s:?}").contains(SECRET));
        let config = Config {
            auth_hmac_secret: Some(s),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains(SECRET));
    }

    #[test]
    fn roomchat_token_signs_what_the_server_accepts() {
        let request = TokenRequest {
            sub: "u9",
            name: Some("Bo"),
            rooms: Some(vec!["$x".into()]),
            ttl_secs: 60,
            issuer: None,
            audience: None,
        };
        let token = sign_hs256(&Secret::new(SECRET), &request).unwrap();
        let id = verifier().verify(&token).unwrap();
        assert_eq!((id.sub.as_str(), id.name.as_str()), ("u9", "Bo"));
        assert!(id.may_join("$x") && !id.may_join("lobby"));
        assert!(id.exp > unix_now() && id.exp <= unix_now() + 60);
    }

    /// A P-256 key pair made for the tests only.
    const TEST_EC_PRIVATE: &str = include_str!("../tests/keys/ec-private.pem");
    const TEST_EC_PUBLIC: &str = include_str!("../tests/keys/ec-public.pem");
}
