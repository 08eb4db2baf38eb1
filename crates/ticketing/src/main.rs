//! `ticketing`: the marketplace's one binary.

use clap::{Parser, Subcommand};
use ticketing::{MigrateArgs, ServeArgs};
use tokio_util::sync::CancellationToken;

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
    /// Run the database migrations of every service, or of the ones named, and exit.
    Migrate(Box<MigrateArgs>),
    /// Look at and fix what operators must: parked events, outbox backlog, owed refunds.
    Admin(Box<ticketing::admin::AdminArgs>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `cargo run` with no arguments serves everything with defaults.
    let args = match cli.command {
        Some(Command::Serve(args)) => *args,
        Some(Command::Admin(args)) => {
            httpkit::telemetry::init(args.settings.log_format);
            print!("{}", ticketing::admin::run(&args).await?);
            return Ok(());
        }
        Some(Command::Migrate(args)) => {
            httpkit::telemetry::init(args.settings.log_format);
            return ticketing::migrate(*args).await;
        }
        None => match Cli::parse_from(["ticketing", "serve"]).command {
            Some(Command::Serve(args)) => *args,
            _ => unreachable!("serve was given"),
        },
    };
    httpkit::telemetry::init(args.settings.log_format);
    // Listen for signals from the start: a process still waiting for its database stops too.
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    let running = ticketing::start_until(args, shutdown).await?;
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
