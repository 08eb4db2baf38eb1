//! Child processes of the test (nats-server, `ticketing serve`): each writes its output to its
//! own log file, can be killed with SIGKILL on purpose and started again with the same command,
//! and is killed when dropped, so a failing or panicking test leaves nothing running. A test
//! that panics prints the end of every log on the way out.
//!
//! When util-linux's `setpriv` is present the child is also started with a parent-death signal,
//! so even a test process killed from outside (a runner's timeout) takes its children with it.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};

/// How many lines of each log a failing test prints.
const TAIL_LINES: usize = 40;

pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Proc {
    /// Starts `program args` with exactly `env` (nothing inherited but `PATH`), logging to
    /// `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], env: &[(String, String)], log_dir: &Path) -> Self {
        let mut proc = Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args: args.to_vec(),
            env: env.to_vec(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
        };
        proc.start();
        proc
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|err| panic!("cannot open {}: {err}", self.log.display()));
        writeln!(log, "=== test harness: start #{} of {}", self.starts, self.name).expect("log writable");
        let mut command = if let Some(setpriv) = setpriv() {
            let mut command = Command::new(setpriv);
            command.arg("--pdeathsig").arg("KILL").arg("--").arg(&self.program);
            command
        } else {
            Command::new(&self.program)
        };
        command
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log));
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {} ({}): {err}", self.name, self.program.display()));
        self.child = Some(child);
    }

    /// `kill -9`: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same command again (after [`Proc::kill9`] or an exit).
    pub fn restart(&mut self) {
        self.kill9();
        self.start();
    }

    /// `None` while running (or killed on purpose), else how it exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|child| child.try_wait().expect("try_wait"))
    }

    /// The last lines of the log.
    pub fn tail(&self) -> String {
        tail(&self.log, TAIL_LINES)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- last lines of {} ({}) -----\n{}", self.name, self.log.display(), self.tail());
            // The whole log outlives the test's temp dir, for a closer look.
            let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-logs");
            if std::fs::create_dir_all(&kept).is_ok()
                && let Some(file) = self.log.file_name()
                && std::fs::copy(&self.log, kept.join(file)).is_ok()
            {
                eprintln!("(whole log kept in {})", kept.join(file).display());
            }
        }
        self.kill9();
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| format!("(cannot read: {err})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| ["/usr/bin/setpriv", "/bin/setpriv"].iter().map(PathBuf::from).find(|path| path.exists()))
        .as_deref()
}

/// A loopback port nobody listens on now, never handed out twice by this process.
///
/// The port is passed to a child that binds it a moment later, and kept across its restarts.
/// Ports the kernel hands out for `bind(0)` and for outgoing connections (the ephemeral range)
/// could be taken meanwhile by any other test running beside this one, so the port is picked
/// below that range, where only a fixed configuration would listen (and the bind check sees it).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let (low, high) = below_ephemeral_range();
    // Start somewhere different in each test process, then walk up.
    let span = u32::from(high - low);
    let mut candidate = low + (std::process::id().wrapping_mul(2_654_435_761) % span) as u16;
    for _ in 0..span {
        candidate = if candidate + 1 >= high { low } else { candidate + 1 };
        let mut given = GIVEN.lock().expect("ports lock");
        let given = given.get_or_insert_with(HashSet::new);
        if !given.contains(&candidate) && std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            given.insert(candidate);
            return candidate;
        }
    }
    panic!("no free loopback port between {low} and {high}");
}

/// Up to 12,000 ports just below the kernel's ephemeral range (`ip_local_port_range`), above 1024.
fn below_ephemeral_range() -> (u16, u16) {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    assert!(first_ephemeral > 4_096, "the ephemeral port range starts at {first_ephemeral}: no room below it");
    (first_ephemeral.saturating_sub(12_000).max(1_025), first_ephemeral)
}

/// A required setting of the test environment; a clear failure when missing, never a skip.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests with scripts/test (or `eval \"$(scripts/test-deps)\"` first), \
             which starts PostgreSQL, installs nats-server 2.12 and sets it"
        )
    })
}
