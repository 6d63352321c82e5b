//! The `roomchat` binary: flags → Config, logging, start, wait for SIGINT or
//! SIGTERM, shut down, exit status. `roomchat token …` signs a token instead.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use roomchat::auth::{self, TokenRequest};
use roomchat::config::Secret;
use roomchat::{Config, Server, StartError};

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "token") {
        return token(TokenArgs::parse_from(std::env::args_os().skip(1)));
    }
    without_thread_caches();
    let config = Config::parse();
    init_logging();

    // Registered before the listeners open, so no signal finds us unprepared.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            log::error!("cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::start(config) {
        Ok(server) => server,
        // Keys that cannot be used are a usage error, as a bad flag is.
        Err(e @ StartError::Auth(_)) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // The one line on stdout: scripts and tests read the bound ports from it.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{}", server.banner());
    let _ = stdout.flush();

    if let Some(signal) = signals.forever().next() {
        log::info!("received signal {signal}");
    }
    server.shutdown();
    ExitCode::SUCCESS
}

/// env_logger, as `RUST_LOG` says (default `info`), except tungstenite's
/// trace records: it writes every frame's payload at trace, and a payload
/// may be a token (`authenticate`) or a message text, which are never
/// logged (tokens) or only at debug, by us (texts).
fn init_logging() {
    struct Capped(env_logger::Logger);
    impl log::Log for Capped {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            let payloads = metadata.level() == log::Level::Trace
                && metadata.target().starts_with("tungstenite");
            !payloads && self.0.enabled(metadata)
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                self.0.log(record);
            }
        }
        fn flush(&self) {
            self.0.flush();
        }
    }
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Capped(logger))).is_ok() {
        log::set_max_level(max);
    }
}

/// Prints a token signed with the configured HMAC secret, for demos and
/// tests (an application's login issues its own), and the page's link.
///
/// The token is the secret's to sign: keep it in CHAT_AUTH_HMAC_SECRET.
#[derive(Debug, Parser)]
#[command(name = "roomchat token", version, about, long_about = None)]
struct TokenArgs {
    /// The user's id (the token's `sub`): 1 to 64 characters.
    #[arg(long, value_name = "ID")]
    sub: String,

    /// The display name (`name`); without it, others see the `sub`.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// The only rooms the token may join (`rooms`), comma-separated; rooms
    /// starting with `$` need this.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    rooms: Option<Vec<String>>,

    /// How long the token is valid: seconds, or with a unit (90s, 15m, 1h, 2d).
    #[arg(long, default_value = "1h", value_name = "TTL", value_parser = parse_ttl)]
    ttl: u64,

    /// The server's HMAC secret (the same variable as the server's).
    #[arg(
        long,
        env = "CHAT_AUTH_HMAC_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    auth_hmac_secret: Option<Secret>,

    /// The `iss` to put in the token (the server's --auth-issuer).
    #[arg(long, env = "CHAT_AUTH_ISSUER", value_name = "ISS")]
    auth_issuer: Option<String>,

    /// The `aud` to put in the token (the server's --auth-audience).
    #[arg(long, env = "CHAT_AUTH_AUDIENCE", value_name = "AUD")]
    auth_audience: Option<String>,

    /// The server's host, for the page's link.
    #[arg(long, env = "CHAT_HOST", default_value = "127.0.0.1")]
    host: String,

    /// The server's HTTP port, for the page's link.
    #[arg(long, env = "CHAT_HTTP_PORT", default_value_t = 3000)]
    http_port: u16,
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if n > 0 && scale > 0 && n <= 366 * 86_400 / scale => Ok(n * scale),
        _ => Err(format!(
            "expected a duration such as 90s, 15m, 1h or 2d (at most a year), got {s:?}"
        )),
    }
}

fn token(args: TokenArgs) -> ExitCode {
    let Some(secret) = &args.auth_hmac_secret else {
        eprintln!("roomchat token: set CHAT_AUTH_HMAC_SECRET (or --auth-hmac-secret) to the server's secret");
        return ExitCode::from(2);
    };
    let request = TokenRequest {
        sub: &args.sub,
        name: args.name.as_deref(),
        rooms: args.rooms.clone(),
        ttl_secs: args.ttl,
        issuer: args.auth_issuer.as_deref(),
        audience: args.auth_audience.as_deref(),
    };
    match auth::sign_hs256(secret, &request) {
        Ok(token) => {
            let host = roomchat::config::bracket_ipv6(&args.host);
            println!("{token}");
            println!("http://{host}:{}/#token={token}", args.http_port);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("roomchat token: {e}");
            ExitCode::from(2)
        }
    }
}

/// glibc's malloc keeps a cache of freed memory per thread (its tcache).
/// A thread per connection makes that a cost per connection: measured with
/// 2,000 idle clients that joined a room, 20.2 KiB of RSS each with the
/// caches, 13.8 KiB without, at no cost we could measure in throughput
/// (the hot path allocates little). glibc reads the switch only when a
/// process starts, so the binary starts itself once more with it set,
/// unless the environment already says how the tcache is to be. (Elsewhere
/// than glibc the variable means nothing and changes nothing.)
fn without_thread_caches() {
    use std::os::unix::process::CommandExt;
    const TUNABLE: &str = "glibc.malloc.tcache_count";
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if tunables.contains(TUNABLE) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let tunables = match tunables.as_str() {
        "" => format!("{TUNABLE}=0"),
        other => format!("{other}:{TUNABLE}=0"),
    };
    // exec returns only if it failed; then run as we are.
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", tunables)
        .exec();
    eprintln!("roomchat: running with glibc's thread caches ({error})");
}
