//! `ticketing`: the marketplace's one binary.

use clap::{Parser, Subcommand};
use ticketing::ServeArgs;

#[derive(Debug, Parser)]
#[command(name = "ticketing", version, about = "A ticket resale marketplace")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the marketplace: every service, or the ones named.
    Serve(Box<ServeArgs>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `cargo run` with no arguments serves everything with defaults.
    let args = match cli.command {
        Some(Command::Serve(args)) => *args,
        None => match Cli::parse_from(["ticketing", "serve"]).command {
            Some(Command::Serve(args)) => *args,
            None => unreachable!("serve was given"),
        },
    };
    platform::telemetry::init(args.settings.log_format);
    let running = ticketing::start(args).await?;
    let token = running.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    running.wait().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
