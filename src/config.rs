//! The server's settings: flags, their `CHAT_*` environment variables and
//! defaults, all parsed here in one place (clap does flags-with-env-fallback).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// A real-time, room-based chat server.
///
/// Serves the browser client over HTTP and the chat protocol over WebSocket.
/// Every flag can also be set by an environment variable, shown in
/// brackets; a flag on the command line wins.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "roomchat",
    version,
    about,
    long_about = None,
    after_help = "`roomchat token --sub ID [--name NAME] [--rooms A,B] [--ttl 1h]` prints a token \
                  signed with the HMAC secret, and the page's link (roomchat token --help)."
)]
pub struct Config {
    /// Address both listeners bind.
    #[arg(long, env = "CHAT_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// HTTP port (the page, /healthz, /metrics, ...); 0 picks a free port.
    #[arg(long, env = "CHAT_HTTP_PORT", default_value_t = 3000)]
    pub http_port: u16,

    /// WebSocket port (the chat protocol at /ws, Socket.IO at /socket.io/); 0 picks a free port.
    #[arg(long, env = "CHAT_WS_PORT", default_value_t = 3001)]
    pub ws_port: u16,

    /// Serve the client from this folder instead of the copy built into the binary.
    #[arg(long, env = "CHAT_WWW", value_name = "DIR")]
    pub www: Option<PathBuf>,

    /// An allowed Origin (repeatable; in the variable, comma-separated). Replaces the
    /// defaults, http://localhost:PORT, http://127.0.0.1:PORT and http://HOST:PORT.
    /// `*` allows any origin.
    #[arg(
        long = "allowed-origin",
        env = "CHAT_ALLOWED_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Most concurrent clients (WebSocket and long-polling); more get HTTP 503.
    #[arg(
        long,
        env = "CHAT_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_name = "N"
    )]
    pub max_connections: usize,

    /// Largest frame and largest message, in bytes, after reassembly; more closes with 1009.
    #[arg(long, env = "CHAT_MAX_MESSAGE_BYTES", default_value_t = 65_536, value_name = "N",
          value_parser = parse_message_bytes)]
    pub max_message_bytes: usize,

    /// Chat messages kept per room and sent to joiners.
    #[arg(long, env = "CHAT_HISTORY", default_value_t = 50, value_name = "N")]
    pub history: usize,

    /// Client frames per second per connection (a token bucket of 2×N that starts full), or `off`.
    #[arg(long, env = "CHAT_RATE_LIMIT", default_value = "20", value_name = "N|off", value_parser = parse_rate_limit)]
    pub rate_limit: RateLimit,

    /// Seconds between the server's Pings.
    #[arg(long, env = "CHAT_PING_INTERVAL", default_value = "25", value_name = "SECS", value_parser = parse_secs)]
    pub ping_interval: Duration,

    /// Seconds of silence after which a connection is dropped.
    #[arg(long, env = "CHAT_IDLE_TIMEOUT", default_value = "60", value_name = "SECS", value_parser = parse_secs)]
    pub idle_timeout: Duration,

    /// Seconds a connection has, from accept, to complete its request head or WebSocket handshake.
    #[arg(long, env = "CHAT_HANDSHAKE_TIMEOUT", default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    pub handshake_timeout: Duration,

    /// Run as one node of a cluster whose rooms live in this Redis
    /// (redis://HOST:PORT[/DB] or unix:///path). Without it, rooms live in
    /// this process alone.
    // A URL may hold a password: a `Secret`, which nothing prints.
    #[arg(long, env = "CHAT_REDIS", value_name = "URL", hide_env_values = true)]
    pub redis: Option<Secret>,

    /// Prefix of every Redis key and channel of the cluster, so that several
    /// clusters can share one Redis.
    #[arg(
        long,
        env = "CHAT_REDIS_PREFIX",
        default_value = "roomchat",
        value_name = "PREFIX",
        value_parser = parse_prefix
    )]
    pub redis_prefix: String,

    /// The cluster's heartbeat period (a dead node is out after 8 of them;
    /// a down Redis is retried every half). For tests; keep the default.
    #[arg(long = "redis-tick-ms", env = "CHAT_REDIS_TICK_MS", default_value = "1000", hide = true, value_parser = parse_millis)]
    pub redis_tick: Duration,

    /// Verify identities (v3): tokens signed with HS256 by this secret, at
    /// least 32 bytes. Put it in the variable, not on the command line.
    #[arg(
        long,
        env = "CHAT_AUTH_HMAC_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub auth_hmac_secret: Option<Secret>,

    /// Verify identities (v3): tokens signed with RS256 or ES256, checked
    /// with the RSA or P-256 public key in this PEM file.
    #[arg(long, env = "CHAT_AUTH_PUBLIC_KEY", value_name = "FILE")]
    pub auth_public_key: Option<PathBuf>,

    /// With a key: a token's `iss` must be this.
    #[arg(long, env = "CHAT_AUTH_ISSUER", value_name = "ISS")]
    pub auth_issuer: Option<String>,

    /// With a key: a token's `aud` must name this.
    #[arg(long, env = "CHAT_AUTH_AUDIENCE", value_name = "AUD")]
    pub auth_audience: Option<String>,

    /// Seconds of clock leeway on a token's exp, nbf and iat (0 to 30). A
    /// connection whose token expired is closed at most this long after exp.
    #[arg(long, env = "CHAT_AUTH_LEEWAY", default_value_t = 5, value_name = "SECS",
          value_parser = parse_leeway)]
    pub auth_leeway: u64,
}

/// Most clock leeway the protocol allows on a token, in seconds.
pub const MAX_LEEWAY_SECS: u64 = 30;

/// A secret from the flags: never printed, whatever prints it (`Debug`
/// included).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    pub(crate) fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub(crate) fn expose_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret::new(s))
    }
}

/// Frames per second per connection, or no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit(pub Option<u32>);

fn parse_rate_limit(s: &str) -> Result<RateLimit, String> {
    match s.trim() {
        off if off.eq_ignore_ascii_case("off") => Ok(RateLimit(None)),
        n => match n.parse::<u32>() {
            Ok(0) | Err(_) => Err(format!(
                "expected a whole number of frames per second (1 or more) or `off`, got {s:?}"
            )),
            Ok(n) => Ok(RateLimit(Some(n))),
        },
    }
}

fn parse_message_bytes(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1 << 30).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a whole number of bytes from 1 to 1073741824, got {s:?}"
        )),
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n > 0 && n <= 86_400 => Ok(Duration::from_secs(n)),
        _ => Err(format!(
            "expected a whole number of seconds from 1 to 86400, got {s:?}"
        )),
    }
}

fn parse_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "expected 1 to 64 printable ASCII characters without ':', got {s:?}"
        ))
    }
}

fn parse_leeway(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n <= MAX_LEEWAY_SECS => Ok(n),
        _ => Err(format!(
            "expected a whole number of seconds from 0 to 30, got {s:?}"
        )),
    }
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (10..=60_000).contains(&n) => Ok(Duration::from_millis(n)),
        _ => Err(format!("expected milliseconds from 10 to 60000, got {s:?}")),
    }
}

impl Default for Config {
    /// The documented defaults, ignoring the environment.
    fn default() -> Config {
        Config {
            host: "127.0.0.1".into(),
            http_port: 3000,
            ws_port: 3001,
            www: None,
            allowed_origins: Vec::new(),
            max_connections: 10_000,
            max_message_bytes: 65_536,
            history: 50,
            rate_limit: RateLimit(Some(20)),
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            redis: None,
            redis_prefix: "roomchat".into(),
            redis_tick: Duration::from_secs(1),
            auth_hmac_secret: None,
            auth_public_key: None,
            auth_issuer: None,
            auth_audience: None,
            auth_leeway: 5,
        }
    }
}

impl Config {
    /// Settings for a test server: the defaults on free ports.
    pub fn ephemeral() -> Config {
        Config {
            http_port: 0,
            ws_port: 0,
            ..Config::default()
        }
    }

    /// Whether a key is configured: clients must then prove who they are (v3).
    pub fn auth_configured(&self) -> bool {
        self.auth_hmac_secret.is_some() || self.auth_public_key.is_some()
    }

    /// Engine.IO's `pingTimeout`: how long after a ping a client may take
    /// to answer. The idle timeout less the ping interval, so that a client
    /// and the server give up at the same moment, but at least a second.
    pub(crate) fn ping_timeout(&self) -> Duration {
        self.idle_timeout
            .saturating_sub(self.ping_interval)
            .max(Duration::from_secs(1))
    }

    /// The origins allowed for CORS once the HTTP port is known: the
    /// configured list, or the page's own origins on that port.
    pub(crate) fn origins_for(&self, http_port: u16) -> Vec<String> {
        if !self.allowed_origins.is_empty() {
            return self
                .allowed_origins
                .iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect();
        }
        self.own_origins(http_port)
    }

    /// The origins allowed to open a WebSocket: those of CORS and, with the
    /// defaults, also the WebSocket port's own. Non-browser clients such as
    /// Python's websocket-client send `Origin: http://HOST:WS_PORT` unasked;
    /// no page is served from that port, so allowing it lets no page in.
    pub(crate) fn handshake_origins_for(&self, http_port: u16, ws_port: u16) -> Vec<String> {
        let mut origins = self.origins_for(http_port);
        if self.allowed_origins.is_empty() {
            origins.extend(self.own_origins(ws_port));
        }
        origins
    }

    /// `http://localhost:PORT`, `http://127.0.0.1:PORT` and `http://HOST:PORT`.
    fn own_origins(&self, port: u16) -> Vec<String> {
        let mut origins = vec![
            format!("http://localhost:{port}"),
            format!("http://127.0.0.1:{port}"),
        ];
        let own = format!("http://{}:{port}", bracket_ipv6(&self.host));
        if !origins.contains(&own) {
            origins.push(own);
        }
        origins
    }
}

/// `::1` → `[::1]`, as it appears in URLs; names and IPv4 addresses unchanged.
pub fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The set of origins a request may come from.
#[derive(Debug, Clone)]
pub(crate) struct Origins {
    any: bool,
    list: Vec<String>,
}

impl Origins {
    pub(crate) fn new(list: Vec<String>) -> Origins {
        Origins {
            any: list.iter().any(|o| o == "*"),
            list,
        }
    }

    /// Origins compare exactly, but for the case of the scheme and host.
    pub(crate) fn allows(&self, origin: &str) -> bool {
        self.any || self.list.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_protocol() {
        let parsed = Config::try_parse_from(["roomchat"]).unwrap();
        let default = Config::default();
        assert_eq!(parsed.http_port, default.http_port);
        assert_eq!(parsed.rate_limit, RateLimit(Some(20)));
        assert_eq!(parsed.idle_timeout, default.idle_timeout);
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let c = Config::try_parse_from([
            "roomchat",
            "--redis",
            "redis://:hunter2-redis@db:6379/0",
            "--auth-hmac-secret",
            "hunter2-hmac-0123456789abcdef0123456789",
        ])
        .unwrap();
        assert_eq!(
            c.redis.as_ref().map(Secret::expose_str),
            Some("redis://:hunter2-redis@db:6379/0")
        );
        let printed = format!("{c:?} {c:#?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert_eq!(printed.matches("Secret(..)").count(), 4, "{printed}");
    }

    #[test]
    fn flags_parse() {
        let c = Config::try_parse_from([
            "roomchat",
            "--rate-limit",
            "off",
            "--allowed-origin",
            "http://a",
            "--allowed-origin",
            "http://b,http://c",
            "--ping-interval",
            "2",
        ])
        .unwrap();
        assert_eq!(c.rate_limit, RateLimit(None));
        let loud = Config::try_parse_from([
            "roomchat",
            "--rate-limit",
            "OFF",
            "--max-message-bytes",
            "100",
        ])
        .unwrap();
        assert_eq!(
            (loud.rate_limit, loud.max_message_bytes),
            (RateLimit(None), 100)
        );
        assert_eq!(c.allowed_origins, ["http://a", "http://b", "http://c"]);
        assert_eq!(c.ping_interval, Duration::from_secs(2));
        for bad in [
            ["--rate-limit", "0"],
            ["--rate-limit", "fast"],
            ["--idle-timeout", "1.5"],
            ["--http-port", "70000"],
        ] {
            assert!(
                Config::try_parse_from(["roomchat", bad[0], bad[1]]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn default_origins_follow_host_and_port() {
        let c = Config {
            host: "0.0.0.0".into(),
            ..Config::default()
        };
        assert_eq!(
            c.origins_for(8080),
            [
                "http://localhost:8080",
                "http://127.0.0.1:8080",
                "http://0.0.0.0:8080"
            ]
        );
        let origins = Origins::new(Config::default().origins_for(3000));
        assert!(origins.allows("http://localhost:3000") && !origins.allows("http://evil.example"));
        assert!(
            !origins.allows("http://127.0.0.1:3001"),
            "CORS: the page's origins only"
        );
        let handshake = Origins::new(Config::default().handshake_origins_for(3000, 3001));
        assert!(
            handshake.allows("http://127.0.0.1:3001") && handshake.allows("http://localhost:3000")
        );
        let configured = Config {
            allowed_origins: vec!["http://a".into()],
            ..Config::default()
        };
        assert_eq!(configured.handshake_origins_for(3000, 3001), ["http://a"]);
        assert!(Origins::new(vec!["*".into()]).allows("http://evil.example"));
    }
}
