//! The API checked against its own OpenAPI description by schemathesis, with all its checks:
//! every documented operation is fuzzed with schema-valid and schema-invalid input (bounded
//! examples, a fixed seed), and every answer must be one the description allows, in the shape it
//! describes; invalid input must be refused, valid input accepted, protected operations must
//! refuse a missing or forged token.
//!
//! schemathesis comes from scripts/test-deps (a pinned version in `.tools/venv`); without it this
//! test fails, it does not skip.

use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::Backend;

/// Examples per operation and phase: enough to reach every documented status, small enough
/// for the suite (the whole run takes about 20 s).
const MAX_EXAMPLES: &str = "25";
/// A fixed seed: a failure reproduces with the same command.
const SEED: &str = "20261201";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `SCHEMATHESIS` (exported by scripts/test-deps), else the copy scripts/test-deps installs in
/// the repository's `.tools`.
fn schemathesis_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SCHEMATHESIS") {
        return bin.into();
    }
    let installed = repo_root().join(".tools/venv/bin/schemathesis");
    assert!(
        installed.exists(),
        "schemathesis not found: SCHEMATHESIS is not set and {} does not exist; run the suite with \
         scripts/test, or `eval \"$(scripts/test-deps)\"` first (it installs the pinned schemathesis)",
        installed.display()
    );
    installed
}

/// A fresh user's session token, for the protected operations.
async fn session_token(app: &apptest::TestApp) -> String {
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let response = reqwest::Client::new()
        .post(app.url("/api/users/signup"))
        .json(&serde_json::json!({"email": email, "password": "correct horse battery"}))
        .send()
        .await
        .expect("sign-up sent");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let cookie = response.headers()["set-cookie"].to_str().expect("a text cookie");
    cookie.trim_start_matches("session=").split(';').next().expect("a token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_does_what_its_openapi_description_says() {
    let bin = schemathesis_bin();
    let app = apptest::spawn_app(Backend::Embedded).await;
    let token = session_token(&app).await;
    let spec: serde_json::Value =
        reqwest::get(app.url("/api/docs/openapi.json")).await.expect("spec").json().await.expect("JSON spec");
    let operations: usize = spec["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, |ops| ops.len()))
        .sum();
    let workdir = testkit::TempDir::new();
    // Signing out revokes the token the run uses, so sign-out is fuzzed last, on its own.
    let signout = "/api/users/signout";
    let (everything_else, everything_else_report) =
        schemathesis(&bin, &app, &token, workdir.path(), &["--exclude-path", signout]).await;
    let (sign_out, sign_out_report) =
        schemathesis(&bin, &app, &token, workdir.path(), &["--include-path", signout]).await;
    app.stop().await;
    for (passed, report) in [(everything_else, &everything_else_report), (sign_out, &sign_out_report)] {
        assert!(passed, "schemathesis found the API and its description apart:\n{report}");
    }
    // A run that tested nothing would also succeed: every documented operation must have been
    // exercised.
    assert!(
        everything_else_report.contains(&format!("Tested: {}", operations - 1)),
        "not all {} operations but sign-out were tested:\n{everything_else_report}",
        operations - 1
    );
    assert!(sign_out_report.contains("Tested: 1"), "sign-out was not tested:\n{sign_out_report}");
}

/// One schemathesis run with all checks against `app`; whether it passed, and its report.
async fn schemathesis(
    bin: &Path,
    app: &apptest::TestApp,
    token: &str,
    workdir: &Path,
    filter: &[&str],
) -> (bool, String) {
    let config = repo_root().join("crates/ticketing/tests/schemathesis.toml");
    let run = tokio::process::Command::new(bin)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(app.url("/api/docs/openapi.json"))
        .args(["--checks", "all", "--max-examples", MAX_EXAMPLES, "--seed", SEED])
        .args(["--generation-database", "none", "--request-timeout", "10", "--no-color"])
        .args(filter)
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .current_dir(workdir)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("schemathesis finished within 150 s")
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", bin.display()));
    let report = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}");
    (output.status.success(), report)
}
