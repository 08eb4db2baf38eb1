//! `ticketing serve <service>` processes on loopback ports, and the client-side router that
//! stands in for the ingress: a request goes to the service its path prefix names, round-robin
//! over the instances the test has not killed, and on to the next instance when one refuses
//! the connection (what nginx's `proxy_next_upstream error` does).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::process::{Proc, free_port};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Svc {
    Auth,
    Tickets,
    Orders,
    Expiration,
    Payments,
}

impl Svc {
    pub const ALL: [Svc; 5] = [Svc::Auth, Svc::Tickets, Svc::Orders, Svc::Expiration, Svc::Payments];

    pub fn name(self) -> &'static str {
        match self {
            Svc::Auth => "auth",
            Svc::Tickets => "tickets",
            Svc::Orders => "orders",
            Svc::Expiration => "expiration",
            Svc::Payments => "payments",
        }
    }

    /// The service the ingress routes a path to.
    fn for_path(path: &str) -> Svc {
        for (prefix, svc) in [
            ("/api/users", Svc::Auth),
            ("/api/tickets", Svc::Tickets),
            ("/api/orders", Svc::Orders),
            ("/api/payments", Svc::Payments),
        ] {
            if path.starts_with(prefix) {
                return svc;
            }
        }
        panic!("no service serves {path}")
    }
}

/// What the router and the probes need to know about an instance.
#[derive(Debug)]
pub struct InstanceInfo {
    pub svc: Svc,
    pub label: String,
    pub port: u16,
    /// False from just before the test kills it until it is started again.
    pub alive: AtomicBool,
}

impl InstanceInfo {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

pub struct Instance {
    pub info: Arc<InstanceInfo>,
    pub proc: Proc,
}

/// Everything an instance is started with.
#[derive(Clone)]
pub struct Launch {
    pub bin: PathBuf,
    pub log_dir: PathBuf,
    pub data_root: PathBuf,
    /// Environment shared by every instance.
    pub env: Vec<(String, String)>,
    /// `NATS_URL` (without credentials).
    pub nats_url: String,
    /// Password of each bus user, by service name.
    pub nats_passwords: Vec<(String, String)>,
}

impl Launch {
    pub fn new(bin: PathBuf, dir: &Path, env: Vec<(String, String)>, nats: &crate::nats::NatsCluster) -> Self {
        let log_dir = dir.join("logs");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        Self {
            bin,
            log_dir,
            data_root: dir.join("instances"),
            env,
            nats_url: nats.url(),
            nats_passwords: crate::nats::BUS_USERS
                .iter()
                .map(|user| ((*user).to_owned(), nats.password(user).to_owned()))
                .collect(),
        }
    }

    /// Starts `ticketing serve <services>` on a free port as `label`.
    pub fn start(&self, label: &str, services: &[Svc]) -> Instance {
        let port = free_port();
        let data_dir = self.data_root.join(label);
        let mut env = self.env.clone();
        env.extend([
            ("TICKETING_ADDR".to_owned(), format!("127.0.0.1:{port}")),
            ("TICKETING_DATA_DIR".to_owned(), data_dir.display().to_string()),
            ("NATS_URL".to_owned(), self.nats_url.clone()),
        ]);
        // A process running one service connects as that service's user; the bus refuses
        // anything else it might try to publish.
        if let [svc] = services
            && let Some((_, password)) = self.nats_passwords.iter().find(|(user, _)| user == svc.name())
        {
            env.push(("NATS_USER".to_owned(), svc.name().to_owned()));
            env.push(("NATS_PASSWORD".to_owned(), password.clone()));
        }
        let mut args = vec!["serve".to_owned()];
        args.extend(services.iter().map(|svc| svc.name().to_owned()));
        let proc = Proc::spawn(label, &self.bin, &args, &env, &self.log_dir);
        let info =
            Arc::new(InstanceInfo { svc: services[0], label: label.to_owned(), port, alive: AtomicBool::new(true) });
        Instance { info, proc }
    }
}

impl Instance {
    /// `kill -9`, after taking it out of the router.
    pub fn kill(&mut self) {
        self.info.alive.store(false, Ordering::SeqCst);
        self.proc.kill9();
    }

    /// Starts it again on the same port and puts it back in the router.
    pub fn restart(&mut self) {
        self.proc.restart();
        self.info.alive.store(true, Ordering::SeqCst);
    }

    /// Fails the test when the process exited on its own.
    pub fn check_running(&mut self) {
        if self.info.alive.load(Ordering::SeqCst)
            && let Some(status) = self.proc.exited()
        {
            panic!("{} exited ({status}):\n{}", self.info.label, self.proc.tail());
        }
    }
}

/// `GET /readyz` of an instance, bounded like a Kubernetes probe (1 s).
pub async fn probe_ready(client: &reqwest::Client, info: &InstanceInfo) -> Option<Value> {
    let response = client.get(info.url("/readyz")).timeout(Duration::from_secs(1)).send().await.ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    Some(response.json().await.unwrap_or(Value::Null))
}

/// Waits until every instance answers `/readyz` with 200.
pub async fn wait_ready(instances: &mut [Instance], timeout: Duration) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut missing = Vec::new();
        for instance in instances.iter_mut() {
            instance.check_running();
            if probe_ready(&client, &instance.info).await.is_none() {
                missing.push(instance.info.label.clone());
            }
        }
        if missing.is_empty() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "not ready after {timeout:?}: {missing:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP answer: status, JSON body (Null when empty or not JSON), the session cookie if set.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub session: Option<String>,
}

impl Reply {
    pub fn message(&self) -> String {
        self.body["errors"][0]["message"].as_str().unwrap_or("").to_owned()
    }
}

/// The router: one client, every instance, round-robin per service.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    instances: Arc<Vec<Arc<InstanceInfo>>>,
    next: Arc<AtomicUsize>,
}

impl Api {
    pub fn new(instances: Vec<Arc<InstanceInfo>>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        Self { client, instances: Arc::new(instances), next: Arc::new(AtomicUsize::new(0)) }
    }

    /// Sends a request to an instance of the service its path names. `Err` when no instance
    /// answered (every live one refused, or the request failed after it was sent: then
    /// whether it took effect is unknown).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        let svc = Svc::for_path(path);
        let candidates: Vec<&Arc<InstanceInfo>> =
            self.instances.iter().filter(|info| info.svc == svc && info.alive.load(Ordering::SeqCst)).collect();
        if candidates.is_empty() {
            return Err(format!("no live instance of {}", svc.name()));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..candidates.len() {
            let info = candidates[(start + i) % candidates.len()];
            let mut request = self.client.request(method.clone(), info.url(path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let session = response
                        .headers()
                        .get_all(reqwest::header::SET_COOKIE)
                        .iter()
                        .filter_map(|value| value.to_str().ok())
                        .find_map(|cookie| cookie.strip_prefix("session="))
                        .map(|rest| rest.split(';').next().unwrap_or("").to_owned());
                    let bytes = response.bytes().await.map_err(|err| format!("{}: body: {err}", info.label))?;
                    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    // An instance still starting did nothing; a load balancer would not have sent
                    // it the request (it is not ready), so try the next one.
                    if status == StatusCode::SERVICE_UNAVAILABLE
                        && body["errors"][0]["message"].as_str().is_some_and(|m| m.contains("starting"))
                        && i + 1 < candidates.len()
                    {
                        last = format!("{}: still starting", info.label);
                        continue;
                    }
                    return Ok(Reply { status, body, session });
                }
                // Refused before anything was sent: safe to try the next instance.
                Err(err) if err.is_connect() => last = format!("{}: {err}", info.label),
                Err(err) => return Err(format!("{}: {err}", info.label)),
            }
        }
        Err(last)
    }
}

/// Where the `ticketing` binary cargo built for this test is.
pub fn ticketing_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ticketing"));
    assert!(Path::new(&bin).exists(), "{} not built", bin.display());
    bin
}
