//! Settings for tests, built in code: the declared defaults of a clap `Args` struct, never
//! what the shell running the tests happens to export (`CURRENCY=jpy`, `RETENTION_DAYS`,
//! `STRIPE_KEY`, `DATABASE_URL`... would otherwise change what every test runs against).

use clap::{Arg, Args, Command};

/// The command that [`defaults`] parses: `A`'s arguments with their environment variables
/// taken off, so nothing but the (empty) argument list feeds them.
pub fn command_without_env<A: Args>() -> Command {
    A::augment_args(Command::new("test").no_binary_name(true)).mut_args(|arg: Arg| arg.env(None))
}

/// `A` (`httpkit::settings::Settings`, a service's settings, the binary's `ServeArgs`) with
/// every field at its declared default, whatever the environment holds. A test changes
/// the fields it needs on the value returned.
///
/// # Panics
/// When `A` has a required argument without a default: a test must set it in code.
pub fn defaults<A: Args>() -> A {
    let matches = command_without_env::<A>()
        .try_get_matches_from(std::iter::empty::<String>())
        .unwrap_or_else(|err| panic!("{} has no default for a required argument: {err}", std::any::type_name::<A>()));
    A::from_arg_matches(&matches).unwrap_or_else(|err| panic!("cannot build {}: {err}", std::any::type_name::<A>()))
}

/// The platform's settings every service reads, at their defaults (see [`defaults`]).
pub fn settings() -> httpkit::settings::Settings {
    defaults()
}
