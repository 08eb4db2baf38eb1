//! Starts the marketplace under test as real processes of the release binary: one process
//! with every service (embedded: SQLite + embedded bus), or one process per service on
//! PostgreSQL + NATS. Also reads their memory from `/proc`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::api::Routes;
use crate::cpu::{Cpu, CpuMeter, Mark, NatsWatch, Watch};

/// One server process we started.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub base: String,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `program args` with `env`, logging to `log`, and waits until `/readyz` answers 200.
    pub async fn start(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let out = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = tokio::process::Command::new(program)
            .args(args)
            .args(["--addr", &addr])
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let proc = Self { name: name.to_owned(), base: format!("http://{addr}"), child, log };
        proc.wait_ready().await?;
        Ok(proc)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = client.get(format!("{}/readyz", self.base)).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                bail!(
                    "{} did not become ready in 60 s; log tail:\n{}",
                    self.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// (current RSS, peak RSS since start or the last [`Proc::reset_peak`]) in KiB.
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        Some((status_field(&status, "VmRSS:")?, status_field(&status, "VmHWM:")?))
    }

    /// Restarts the peak-RSS count, so the next reading is this scenario's peak.
    pub fn reset_peak(&self) {
        if let Some(pid) = self.pid() {
            // "5" resets VmHWM to the current RSS (Linux ≥ 4.0). Best effort.
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }

    /// SIGTERM (graceful shutdown), then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.pid() {
            let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_ok() {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

/// A NATS server of the bench's own (JetStream, file storage under the work dir), so the
/// CPU it spends is the bench's alone.
#[derive(Debug)]
pub struct PrivateNats {
    pub url: String,
    child: tokio::process::Child,
}

impl PrivateNats {
    /// Starts `binary` on free ports and waits until its health check (JetStream included)
    /// answers 200.
    pub async fn start(binary: &Path, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (port, monitor) = (free_port()?, free_port()?);
        let log = std::fs::File::create(dir.join("nats.log"))?;
        let child = tokio::process::Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor.to_string(), "-sd"])
            .arg(dir.join("store"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = client.get(format!("http://127.0.0.1:{monitor}/healthz")).send().await
                && response.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the private nats-server did not become healthy in 30 s (log: {})",
                    dir.join("nats.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { url: format!("nats://127.0.0.1:{port}"), child })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn status_field(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How the marketplace is deployed for a run.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Every service in one process, SQLite files and the embedded bus in a data dir.
    Embedded,
    /// One process per service on a PostgreSQL database and a NATS stream of their own.
    /// `database` is the database's name (its backends' CPU is counted), `nats` which NATS
    /// server's CPU is.
    Cluster {
        database_url: String,
        database: String,
        nats_url: String,
        nats: NatsWatch,
        stream: String,
        prefix: String,
    },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Embedded => "embedded",
            Mode::Cluster { .. } => "postgres+nats",
        }
    }
}

/// The running marketplace.
#[derive(Debug)]
pub struct Marketplace {
    pub procs: Vec<Proc>,
    pub routes: Routes,
    /// CPU of our processes, the database's backends and NATS.
    pub meter: CpuMeter,
}

const SERVICES: [&str; 5] = ["auth", "tickets", "orders", "expiration", "payments"];

/// Which services a run needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Services {
    /// The whole marketplace's API (the web pages too in embedded mode, where they come with
    /// the all-in-one process).
    Api,
    /// What an anonymous visitor browsing the tickets for sale reaches: the tickets service
    /// and the web pages (a process of their own in one-process-per-service mode, calling the
    /// tickets service as their API).
    Browsing,
    /// The whole API with two instances of tickets and of orders (one-process-per-service mode
    /// only), requests to them taken in turn.
    ScaleOut,
}

impl Marketplace {
    /// Starts the marketplace in `mode`, with extra settings `env`, its files under `dir`.
    pub async fn start(binary: &Path, mode: &Mode, dir: &Path, env: &[(String, String)]) -> anyhow::Result<Self> {
        Self::start_services(binary, mode, Services::Api, dir, env).await
    }

    /// Starts `services` of the marketplace in `mode`.
    pub async fn start_services(
        binary: &Path,
        mode: &Mode,
        services: Services,
        dir: &Path,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut env = env.to_vec();
        env.push(("RUST_LOG".into(), "warn".into()));
        match mode {
            Mode::Embedded => {
                let args = vec!["serve".to_owned(), "--data-dir".to_owned(), dir.join("data").display().to_string()];
                let proc = Proc::start("all-in-one", binary, &args, &env, dir.join("ticketing.log")).await?;
                let routes = Routes::single(&proc.base);
                let meter = CpuMeter::start(Watch { ours: proc.pid().into_iter().collect(), ..Watch::default() });
                Ok(Self { procs: vec![proc], routes, meter })
            }
            Mode::Cluster { database_url, database, nats_url, nats, stream, prefix } => {
                env.extend([
                    ("DATABASE_URL".into(), database_url.clone()),
                    ("NATS_URL".into(), nats_url.clone()),
                    ("NATS_STREAM".into(), stream.clone()),
                    ("EVENT_SUBJECT_PREFIX".into(), prefix.clone()),
                    ("JWT_KEY".into(), format!("bench-key-{}-0123456789abcdef0123456789", std::process::id())),
                ]);
                let mut procs = Vec::new();
                // One at a time: each runs its own migrations in its own schema, and the
                // first one creates the stream.
                let started: &[&str] = match services {
                    Services::Api => &SERVICES,
                    Services::Browsing => &["tickets"],
                    Services::ScaleOut => &[SERVICES.as_slice(), &["tickets-2", "orders-2"]].concat(),
                };
                for name in started {
                    // `<service>-2` is a second instance of the service.
                    let service = name.strip_suffix("-2").unwrap_or(name);
                    let args = vec!["serve".to_owned(), service.to_owned()];
                    let log = dir.join(format!("{name}.log"));
                    procs.push(Proc::start(name, binary, &args, &env, log).await?);
                }
                if services == Services::Browsing {
                    let mut env = env.clone();
                    env.push(("API_URL".into(), procs[0].base.clone()));
                    let args = vec!["serve".to_owned(), "web".to_owned()];
                    procs.push(Proc::start("web", binary, &args, &env, dir.join("web.log")).await?);
                }
                // A service not started answers nowhere: its routes go to one that is (and
                // answer 404 there).
                let base = |name: &str| procs.iter().find(|proc| proc.name == name).unwrap_or(&procs[0]).base.clone();
                let mut routes = Routes::new(
                    &base("auth"),
                    &base("tickets"),
                    &base("orders"),
                    &base("payments"),
                    // Without the web pages, other paths go to payments (404), as before.
                    &if services == Services::Browsing { base("web") } else { base("payments") },
                );
                let others = |name: &str| {
                    procs.iter().filter(|proc| proc.name == format!("{name}-2")).map(|proc| proc.base.clone()).collect()
                };
                routes.more_tickets = others("tickets");
                routes.more_orders = others("orders");
                let meter = CpuMeter::start(Watch {
                    ours: procs.iter().filter_map(Proc::pid).collect(),
                    databases: vec![database.clone()],
                    nats: *nats,
                });
                Ok(Self { procs, routes, meter })
            }
        }
    }

    /// Starts a measured phase: resets the peak-memory counts and reads the CPU counters.
    pub fn begin(&self) -> Mark {
        self.reset_peaks();
        self.meter.mark()
    }

    /// Ends a measured phase: waits until the servers are quiet (the events the phase caused
    /// have been applied), then returns the CPU spent since `mark`.
    pub async fn cpu_since(&self, mark: &Mark) -> Cpu {
        self.meter.settle(std::time::Duration::from_secs(15)).await;
        self.meter.since(mark)
    }

    pub fn reset_peaks(&self) {
        self.procs.iter().for_each(Proc::reset_peak);
    }

    /// CPU milliseconds each process has used so far (`utime + stime`).
    pub fn cpu_ms_by_process(&self) -> Vec<(String, f64)> {
        self.procs
            .iter()
            .map(|proc| (proc.name.clone(), proc.pid().and_then(crate::cpu::process_ms).unwrap_or(f64::NAN)))
            .collect()
    }

    /// Peak RSS per process since the last reset, in MiB.
    pub fn peaks_mib(&self) -> Vec<(String, f64)> {
        self.procs
            .iter()
            .map(|proc| (proc.name.clone(), proc.memory_kib().map_or(f64::NAN, |(_, peak)| peak as f64 / 1024.0)))
            .collect()
    }

    /// Current RSS per process, in MiB.
    pub fn rss_mib(&self) -> Vec<(String, f64)> {
        self.procs
            .iter()
            .map(|proc| (proc.name.clone(), proc.memory_kib().map_or(f64::NAN, |(rss, _)| rss as f64 / 1024.0)))
            .collect()
    }

    pub async fn stop(self) {
        for proc in self.procs {
            proc.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_status_fields() {
        let status = "Name:\tticketing\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(status_field(status, "VmHWM:"), Some(51234));
        assert_eq!(status_field(status, "VmRSS:"), Some(40000));
        assert_eq!(status_field(status, "VmSwap:"), None);
    }
}
