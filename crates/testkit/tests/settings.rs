//! Test settings are built in code: a shell that exports the services' variables changes
//! nothing. The proof runs this test binary again as a child process with a hostile
//! environment (setting variables in this multi-threaded process would race other tests).

use std::process::Command;

use httpkit::settings::Settings;

/// What a careless shell might export; each would change a test that read it.
const HOSTILE: &[(&str, &str)] = &[
    ("CURRENCY", "jpy"),
    ("RETENTION_DAYS", "1"),
    ("ACK_WAIT_SECONDS", "299"),
    ("DATABASE_URL", "postgres://hostile@127.0.0.1:1/nowhere"),
    ("NATS_URL", "nats://127.0.0.1:1"),
    ("JWT_KEY", "hostile-session-key-hostile-session-key"),
    ("EVENT_SUBJECT_PREFIX", "hostile"),
];

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
}

/// Run alone it shows the defaults; run by [`a_hostile_environment_changes_no_test_setting`]
/// it shows they hold with every [`HOSTILE`] variable set, which clap itself does read.
#[test]
fn settings_are_the_declared_defaults() {
    let settings = testkit::settings();
    assert_eq!(settings.currency, "usd");
    assert_eq!(settings.retention_days, 7);
    assert_eq!(settings.ack_wait_seconds, 5);
    assert_eq!(settings.database_url, None);
    assert_eq!(settings.nats_url, None);
    assert_eq!(settings.jwt_key, None);
    assert_eq!(settings.subject_prefix, "ticketing");

    // The control: where the environment is hostile, clap's ordinary parse does see it, so
    // the defaults above are not an accident of an environment that never arrived.
    if std::env::var_os("TESTKIT_HOSTILE_ENV").is_some() {
        let parsed = <Cli as clap::Parser>::parse_from(["test"]).settings;
        assert_eq!(parsed.currency, "jpy");
        assert_eq!(parsed.retention_days, 1);
        assert_eq!(parsed.database_url.as_deref(), Some("postgres://hostile@127.0.0.1:1/nowhere"));
    }
}

#[test]
fn a_hostile_environment_changes_no_test_setting() {
    let this_binary = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(this_binary)
        .args(["settings_are_the_declared_defaults", "--exact", "--test-threads", "1"])
        .env("TESTKIT_HOSTILE_ENV", "1")
        .envs(HOSTILE.iter().copied())
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "with a hostile environment:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the child ran the check:\n{stdout}");
}

#[test]
fn the_parsed_command_reads_no_variable() {
    let command = testkit::command_without_env::<Settings>();
    let with_env: Vec<_> =
        command.get_arguments().filter(|arg| arg.get_env().is_some()).map(|arg| arg.get_id()).collect();
    assert!(with_env.is_empty(), "arguments still fed by the environment: {with_env:?}");
    // And the settings do declare variables: the command above took them off.
    let declared = <Settings as clap::Args>::augment_args(clap::Command::new("test"));
    assert!(declared.get_arguments().any(|arg| arg.get_env().is_some_and(|name| name == "CURRENCY")));
}
