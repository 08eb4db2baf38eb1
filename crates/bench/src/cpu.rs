//! CPU time per operation, per kind of process, read from `/proc`.
//!
//! On two shared cores throughput says more about the load generator and the neighbours than
//! about the marketplace; CPU time per operation does not, and it is what predicts how many
//! operations a bigger machine (or a cluster) would do. A [`CpuMeter`] reads `utime + stime`
//! (`/proc/<pid>/stat`, fields 14 and 15, in clock ticks) of every process of interest before
//! and after a phase, and keeps sampling in the background (every 100 ms) so a process that
//! exits during the phase (a PostgreSQL backend whose connection closed) still counts up to
//! its last sample.
//!
//! Which processes count:
//! - ours: the pids of the marketplace processes we started;
//! - PostgreSQL: the backends connected to the bench's own databases, recognised by their
//!   process title (`postgres: <cluster>: <user> <database> <host> <state>`), since the server
//!   may be shared with other users of the machine; the postmaster and the auxiliary processes
//!   (WAL writer, checkpointer, background writer...) work for every database at once, so they
//!   are reported apart ("shared") and left out of the total;
//! - NATS: the private `nats-server` the bench started (its pid), or, with a shared server,
//!   every `nats-server` of the machine (then reported as machine-wide);
//! - the load generator: this process, plus the children it waited for during the phase
//!   (pgbench); never in the total.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What is watched.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Our server processes.
    pub ours: Vec<u32>,
    /// PostgreSQL databases whose backends count.
    pub databases: Vec<String>,
    pub nats: NatsWatch,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NatsWatch {
    #[default]
    None,
    /// The bench's private server.
    Pid(u32),
    /// Every `nats-server` process (a shared server: machine-wide).
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Ours,
    Postgres,
    PostgresShared,
    Nats,
}

/// CPU milliseconds spent during one phase, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cpu {
    pub ours: f64,
    pub postgres: f64,
    /// Postmaster and auxiliary processes, machine-wide (not in [`Cpu::total`]).
    pub postgres_shared: f64,
    pub nats: f64,
    /// This process and its waited-for children (not in [`Cpu::total`]).
    pub load_generator: f64,
    /// Whether `nats` is every NATS server of the machine rather than the bench's own.
    pub nats_machine_wide: bool,
    /// From the first request until the servers were quiet again.
    pub elapsed: Duration,
}

impl Cpu {
    /// The servers' CPU: ours + PostgreSQL (the bench's backends) + NATS.
    pub fn total(&self) -> f64 {
        self.ours + self.postgres + self.nats
    }

    pub fn per(&self, ops: u64) -> Cpu {
        let ops = ops.max(1) as f64;
        Cpu {
            ours: self.ours / ops,
            postgres: self.postgres / ops,
            postgres_shared: self.postgres_shared / ops,
            nats: self.nats / ops,
            load_generator: self.load_generator / ops,
            ..*self
        }
    }

    pub fn plus(&self, other: &Cpu) -> Cpu {
        Cpu {
            ours: self.ours + other.ours,
            postgres: self.postgres + other.postgres,
            postgres_shared: self.postgres_shared + other.postgres_shared,
            nats: self.nats + other.nats,
            load_generator: self.load_generator + other.load_generator,
            nats_machine_wide: self.nats_machine_wide || other.nats_machine_wide,
            elapsed: self.elapsed + other.elapsed,
        }
    }
}

/// A process, told apart from a later one with the same pid by its start time.
type ProcKey = (u32, u64);

#[derive(Debug, Default, Clone)]
struct Snapshot {
    /// Last ticks seen per watched process (dead ones keep their last value).
    ticks: HashMap<ProcKey, (Kind, u64)>,
    own: u64,
    children: u64,
}

#[derive(Debug, Default)]
struct State {
    watch: Watch,
    /// Pids already found not to be watched (and never to become so).
    ignored: HashSet<u32>,
    snapshot: Snapshot,
}

/// Samples the watched processes in the background until dropped.
#[derive(Debug)]
pub struct CpuMeter {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    tick_ms: f64,
}

/// The reading a phase starts from.
#[derive(Debug, Clone)]
pub struct Mark {
    snapshot: Snapshot,
    at: Instant,
}

const SAMPLE_EVERY: Duration = Duration::from_millis(100);

impl CpuMeter {
    pub fn start(watch: Watch) -> Self {
        let state = Arc::new(Mutex::new(State { watch, ..State::default() }));
        let stop = Arc::new(AtomicBool::new(false));
        let (state2, stop2) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                sample(&mut state2.lock().expect("cpu meter lock"));
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        let meter = Self { state, stop, tick_ms: 1000.0 / clock_ticks_per_second() as f64 };
        meter.sample_now();
        meter
    }

    fn sample_now(&self) -> Snapshot {
        let mut state = self.state.lock().expect("cpu meter lock");
        sample(&mut state);
        state.snapshot.clone()
    }

    pub fn mark(&self) -> Mark {
        Mark { snapshot: self.sample_now(), at: Instant::now() }
    }

    /// CPU spent since `mark`.
    pub fn since(&self, mark: &Mark) -> Cpu {
        let now = self.sample_now();
        let nats_machine_wide = self.state.lock().expect("cpu meter lock").watch.nats == NatsWatch::Any;
        let mut cpu = Cpu { nats_machine_wide, elapsed: mark.at.elapsed(), ..Cpu::default() };
        for (key, (kind, ticks)) in &now.ticks {
            let before = mark.snapshot.ticks.get(key).map_or(0, |(_, ticks)| *ticks);
            let ms = ticks.saturating_sub(before) as f64 * self.tick_ms;
            match kind {
                Kind::Ours => cpu.ours += ms,
                Kind::Postgres => cpu.postgres += ms,
                Kind::PostgresShared => cpu.postgres_shared += ms,
                Kind::Nats => cpu.nats += ms,
            }
        }
        let own = now.own.saturating_sub(mark.snapshot.own) + now.children.saturating_sub(mark.snapshot.children);
        cpu.load_generator = own as f64 * self.tick_ms;
        cpu
    }

    /// Servers' CPU in milliseconds so far (for [`CpuMeter::settle`]).
    fn servers_ms(&self) -> f64 {
        let now = self.sample_now();
        now.ticks
            .values()
            .filter(|(kind, _)| *kind != Kind::PostgresShared)
            .map(|(_, ticks)| *ticks as f64)
            .sum::<f64>()
            * self.tick_ms
    }

    /// Waits until the servers are quiet (under 5% of a core over 500 ms; at most `limit`),
    /// so the asynchronous work an operation caused (its event cascade) is counted with it.
    pub async fn settle(&self, limit: Duration) {
        let window = Duration::from_millis(500);
        let deadline = Instant::now() + limit;
        let mut last = self.servers_ms();
        while Instant::now() < deadline {
            tokio::time::sleep(window).await;
            let now = self.servers_ms();
            if now - last < 0.05 * window.as_millis() as f64 {
                return;
            }
            last = now;
        }
    }
}

impl Drop for CpuMeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `getconf CLK_TCK` (the unit of `/proc/<pid>/stat` times); 100 on every Linux we know.
fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    comm: String,
    ppid: u32,
    /// utime + stime.
    ticks: u64,
    /// cutime + cstime: children waited for.
    children: u64,
    start: u64,
}

fn parse_stat(text: &str) -> Option<Stat> {
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so split at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 (state): field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        comm,
        ppid: u32::try_from(field(4)?).ok()?,
        ticks: field(14)? + field(15)?,
        children: field(16)? + field(17)?,
        start: field(22)?,
    })
}

/// CPU milliseconds process `pid` has used so far.
pub fn process_ms(pid: u32) -> Option<f64> {
    Some(read_stat(pid)?.ticks as f64 * 1000.0 / clock_ticks_per_second() as f64)
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// What a `postgres` process is, from its title; `None` when it has none (the postmaster keeps
/// its command line, and so does a backend for an instant after the fork).
fn classify_postgres(cmdline: &str, databases: &[String]) -> Option<Option<Kind>> {
    let title = cmdline.replace('\0', " ");
    let rest = title.strip_prefix("postgres: ")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    // A client backend's title holds its database and the client's address `host(port)`.
    let is_backend = words.iter().any(|word| word.contains('(') && word.ends_with(')')) || words.contains(&"[local]");
    if !is_backend {
        return Some(Some(Kind::PostgresShared));
    }
    Some(databases.iter().any(|database| words.contains(&database.as_str())).then_some(Kind::Postgres))
}

fn sample(state: &mut State) {
    let State { watch, ignored, snapshot } = state;
    if let Some(me) = std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(parse_stat) {
        snapshot.own = me.ticks;
        snapshot.children = me.children;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    let mut alive = HashSet::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        alive.insert(pid);
        if ignored.contains(&pid) {
            continue;
        }
        let Some(stat) = read_stat(pid) else { continue };
        let kind = if watch.ours.contains(&pid) {
            Some(Kind::Ours)
        } else if stat.comm == "nats-server" {
            match watch.nats {
                NatsWatch::Pid(nats) if nats == pid => Some(Kind::Nats),
                NatsWatch::Any => Some(Kind::Nats),
                _ => None,
            }
        } else if stat.comm == "postgres" && !watch.databases.is_empty() {
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            match classify_postgres(&cmdline, &watch.databases) {
                Some(kind) => kind,
                // A backend just forked (its parent is a postgres): look again next time.
                None if read_stat(stat.ppid).is_some_and(|parent| parent.comm == "postgres") => continue,
                // The postmaster.
                None => Some(Kind::PostgresShared),
            }
        } else {
            None
        };
        match kind {
            Some(kind) => {
                snapshot.ticks.insert((pid, stat.start), (kind, stat.ticks));
            }
            None => {
                ignored.insert(pid);
            }
        }
    }
    // A pid that went away may come back as another process: look at it afresh then.
    ignored.retain(|pid| alive.contains(pid));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_odd_names() {
        let text = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 9 0 123456 1000 200 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat { comm: "tokio (rt) x".into(), ppid: 1, ticks: 300, children: 10, start: 123456 })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn tells_the_bench_backends_from_the_others() {
        let dbs = vec!["bench_1".to_owned()];
        let backend = "postgres: 15/main: postgres bench_1 127.0.0.1(40000) idle\0\0\0";
        let other = "postgres: 15/main: postgres test_9 127.0.0.1(40001) idle in transaction";
        let walwriter = "postgres: 15/main: walwriter ";
        let postmaster = "/usr/lib/postgresql/15/bin/postgres\0-D\0/var/lib/postgresql/15/main\0-c\0config_file=x";
        assert_eq!(classify_postgres(backend, &dbs), Some(Some(Kind::Postgres)));
        assert_eq!(classify_postgres(other, &dbs), Some(None));
        assert_eq!(classify_postgres(walwriter, &dbs), Some(Some(Kind::PostgresShared)));
        assert_eq!(classify_postgres(postmaster, &dbs), None);
    }

    #[test]
    fn sums_and_divides() {
        let cpu = Cpu { ours: 10.0, postgres: 20.0, nats: 5.0, load_generator: 8.0, ..Cpu::default() };
        assert_eq!(cpu.total(), 35.0);
        assert_eq!(cpu.per(5).total(), 7.0);
        assert_eq!(cpu.plus(&cpu).load_generator, 16.0);
    }

    #[test]
    fn measures_this_process() {
        let meter = CpuMeter::start(Watch { ours: vec![std::process::id()], ..Watch::default() });
        let mark = meter.mark();
        // Spin until a clock tick of CPU shows up, for both the watched pid and the load
        // generator (the same process here); a busy machine only makes it take longer.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut spin = 0u64;
        let cpu = loop {
            for _ in 0..1_000_000 {
                spin = spin.wrapping_add(std::hint::black_box(1));
            }
            let cpu = meter.since(&mark);
            if (cpu.ours > 0.0 && cpu.load_generator > 0.0) || Instant::now() > deadline {
                break cpu;
            }
        };
        assert!(cpu.ours > 0.0 && cpu.load_generator > 0.0, "{cpu:?} after {spin} spins");
        assert_eq!(cpu.postgres + cpu.nats, 0.0, "nothing else is watched");
    }
}
