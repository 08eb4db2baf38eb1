//! The container image is built and started, not only linted: `scripts/image-test` builds
//! the Dockerfile's `runtime-prebuilt` stage with buildah on a local stand-in of the base
//! image (no image registry is reachable here), with this test's own `ticketing` binary
//! (the debug build cargo made for the tests; the stage strips it), then runs
//! `ticketing --version`, `serve --help` and `ticketing serve` inside the image and waits
//! for `/healthz` and `/readyz`. See the script for what it checks and why it runs that way.
//!
//! The first run on a machine also installs buildah, podman and debootstrap and builds the
//! base root (a few minutes, cached under `.tools/image`); later runs take under a minute.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[test]
fn the_image_builds_from_a_prebuilt_binary_and_serves_health_inside_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let started = Instant::now();
    let output = Command::new(root.join("scripts/image-test"))
        .arg(env!("CARGO_BIN_EXE_ticketing"))
        .output()
        .expect("cannot run scripts/image-test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "scripts/image-test failed ({}):\n{stderr}\n{stdout}", output.status);
    assert!(stdout.lines().any(|line| line == "image-test: ok"), "no success line:\n{stdout}\n{stderr}");
    for step in ["image built in", "stripped", "ticketing --version: ticketing", "/healthz 200", "/readyz 200"] {
        assert!(stderr.contains(step), "scripts/image-test did not report '{step}':\n{stderr}");
    }
    eprintln!("{stderr}");
    eprintln!("image test took {:?}", started.elapsed());
}
