//! roomchat-bench: a load generator for roomchat that holds more connections
//! than the server it measures, on one or a few threads.
//!
//! # Layout
//! - `net`: non-blocking WebSocket client connections on one mio `Poll`,
//!   Engine.IO's handshake and pings inside them when asked
//! - `proto`: the frames sent and a fast reader for the frames received, in
//!   three dialects (roomchat native, roomchat over Socket.IO, the peers'
//!   Socket.IO events); the clock
//! - `server`: the server under test, started here or given by URL and PID
//! - `report`: histograms, /proc readings, the table and the JSON line
//! - `fanout`, `conns`, `churn`: the scenarios
//! - `tokens`: v3 tokens signed ahead of a run, and the cost of roomchat's
//!   own token check
//! - `summary`: medians of result files as Markdown, and the latency plot

mod churn;
mod conns;
mod fanout;
mod net;
mod proto;
mod report;
mod server;
mod summary;
mod tokens;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Load generator for roomchat", max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// R rooms × N members, S senders each: throughput, loss, order, latency.
    Fanout {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        a: fanout::FanoutArgs,
    },
    /// C idle connections in R rooms: connect times, server memory and threads.
    Conns {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        a: conns::ConnsArgs,
    },
    /// Clients connecting, chatting and leaving for T seconds: leaks.
    Churn {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        a: churn::ChurnArgs,
    },
    /// Signs one v3 token per client (`sub` and `name` c0, c1, …) into a
    /// file, for `conns --tokens`.
    Tokens(tokens::TokensArgs),
    /// Times roomchat's token check (HS256, RS256, ES256) in this process.
    Verify(tokens::VerifyArgs),
    /// Side-by-side Markdown tables (medians, ratios, targets) of result files.
    Summary {
        /// Result files (JSON lines from the scenarios).
        files: Vec<PathBuf>,
        /// Replace the text between the result markers of this Markdown file.
        #[arg(long)]
        doc: Option<PathBuf>,
        /// Which markers: `<!-- SECTION:begin -->` … `<!-- SECTION:end -->`
        /// (default `results`).
        #[arg(long)]
        section: Option<String>,
        /// What was measured (e.g. the server's commit), printed with the machine.
        #[arg(long)]
        measured: Option<String>,
        /// The command that made the results, printed with them.
        #[arg(long)]
        command: Option<String>,
    },
    /// An SVG of latency against delivered frames/s from fanout results.
    Plot {
        /// Result files (JSON lines); fanout runs whose label starts with --prefix.
        files: Vec<PathBuf>,
        #[arg(long, default_value = "load-")]
        prefix: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Clone, Debug)]
struct RunArgs {
    #[command(flatten)]
    server: server::ServerArgs,
    /// What to speak: roomchat's native frames, roomchat over Socket.IO, or
    /// the peers' (seed's) Socket.IO events.
    #[arg(long, value_enum, default_value = "native")]
    protocol: proto::Protocol,
    /// Name of the server under test in the output (default: roomchat-native
    /// or roomchat-socketio, or "peer").
    #[arg(long)]
    server_name: Option<String>,
    /// Name of this run (the case) in the output.
    #[arg(long, default_value = "run")]
    label: String,
    /// Give up (and fail) after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Also append the JSON line to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

fn main() -> ExitCode {
    proto::start_clock();
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("roomchat-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cmd: Cmd) -> Result<bool, String> {
    let (run, scenario) = match cmd {
        Cmd::Summary {
            files,
            doc,
            section,
            measured,
            command,
        } => {
            return summary::summary(
                &files,
                doc.as_deref(),
                section.as_deref(),
                measured.as_deref(),
                command.as_deref(),
            )
        }
        Cmd::Plot { files, prefix, out } => return summary::plot(&files, &prefix, &out),
        Cmd::Tokens(a) => return tokens::write_tokens(&a),
        Cmd::Verify(a) => return tokens::verify(&a),
        Cmd::Fanout { run, a } => (run, Scenario::Fanout(a)),
        Cmd::Conns { run, a } => (run, Scenario::Conns(a)),
        Cmd::Churn { run, a } => (run, Scenario::Churn(a)),
    };
    // 10,000 connections need more descriptors than the usual soft limit.
    let nofile =
        rlimit::increase_nofile_limit(u64::MAX).map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let server = server::Server::start(&run.server)?;
    let targets = net::Target::parse_all(&server.urls, run.protocol)?;
    let server_name = run
        .server_name
        .clone()
        .unwrap_or_else(|| match run.protocol {
            proto::Protocol::Peer => "peer".into(),
            p => format!("roomchat-{}", p.name()),
        });
    eprintln!(
        "roomchat-bench: {server_name} at {} (pid {:?}, {}), open-file limit {nofile}",
        server.urls.join(" "),
        server.pid,
        run.protocol.name()
    );
    let ctx = Ctx {
        targets: &targets,
        protocol: run.protocol,
        pid: server.pid,
        label: &run.label,
        timeout: Duration::from_secs(run.timeout),
    };
    let (pass, mut line) = match scenario {
        Scenario::Fanout(a) => fanout::run(&a, &ctx),
        Scenario::Conns(a) => conns::run(&a, &ctx),
        Scenario::Churn(a) => churn::run(&a, &ctx),
    };
    if let Some(o) = line.as_object_mut() {
        o.insert("server".into(), server_name.into());
        o.insert("protocol".into(), run.protocol.name().into());
        o.insert("urls".into(), server.urls.clone().into());
        o.insert(
            "cpus".into(),
            serde_json::json!({
                "server": server.pid.and_then(|p| report::cpus_allowed(Some(p))),
                "bench": report::cpus_allowed(None),
            }),
        );
    }
    report::emit(&line, run.json_out.as_deref()).map_err(|e| format!("writing results: {e}"))?;
    Ok(pass)
}

/// What every scenario gets: where to connect, in which dialect, the server's
/// PID (for /proc readings) and the run's name and time limit.
pub struct Ctx<'a> {
    /// Connection i goes to `targets[i % len]` (`net::Net::connect`).
    pub targets: &'a [net::Target],
    pub protocol: proto::Protocol,
    pub pid: Option<u32>,
    pub label: &'a str,
    pub timeout: Duration,
}

enum Scenario {
    Fanout(fanout::FanoutArgs),
    Conns(conns::ConnsArgs),
    Churn(churn::ChurnArgs),
}
