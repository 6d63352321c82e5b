//! The `roomchat` binary: flags → Config, logging, start, wait for SIGINT or
//! SIGTERM, shut down, exit status.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use roomchat::{Config, Server};

fn main() -> ExitCode {
    let config = Config::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

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
