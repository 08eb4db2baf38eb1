//! A NATS 2.12 cluster on loopback: `size` nats-server processes, each with its own name,
//! ports and JetStream store dir, routed to each other, started from the NATS configuration the
//! project ships (`deploy/k8s/nats/nats.conf`: per-service users and permissions,
//! `sync_interval: always`), with the passwords that configuration reads from the environment.
//!
//! Ports, names, routes and store dirs come from the environment too: they are what differs
//! between a Kubernetes pod and a loopback process.
//!
//! What the cluster thinks is read from the monitoring endpoint (`/jsz`), which needs no
//! credentials, so the test never holds a NATS identity of its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::process::{Proc, free_port, required_env};

/// The stream the services create (`NATS_STREAM`'s default).
pub const STREAM: &str = "TICKETING";
/// The NATS users: one per service that talks to the bus (web never does).
pub const BUS_USERS: &[&str] = &["auth", "tickets", "orders", "expiration", "payments"];

pub struct NatsNode {
    pub name: String,
    pub client_port: u16,
    pub monitor_port: u16,
    proc: Proc,
    up: bool,
}

pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    /// Where the configuration came from (for the report).
    pub config_source: String,
    passwords: Vec<(String, String)>,
    http: reqwest::Client,
}

/// What the cluster says about the stream.
#[derive(Debug, Clone)]
pub struct StreamView {
    pub leader: String,
    pub num_replicas: u64,
    /// The followers: name, and whether it is current (caught up) and not offline.
    pub followers: Vec<(String, bool)>,
    /// Each durable consumer's leader ("" while it has none).
    pub consumer_leaders: Vec<(String, String)>,
}

impl StreamView {
    /// Every replica there and caught up.
    pub fn healthy(&self) -> bool {
        self.followers.len() as u64 + 1 == self.num_replicas && self.followers.iter().all(|(_, ok)| *ok)
    }
}

impl NatsCluster {
    /// Starts `size` servers, routed together, under `dir`, each as the StatefulSet runs it:
    /// `nats-server -c deploy/k8s/nats/nats.conf` with its node's settings and every user's
    /// password in its environment.
    pub fn start(size: usize, dir: &Path) -> Self {
        let bin = PathBuf::from(required_env("NATS_SERVER_BIN"));
        assert!(bin.exists(), "NATS_SERVER_BIN={} does not exist", bin.display());
        let config = repo_root().join("deploy/k8s/nats/nats.conf");
        assert!(config.exists(), "the shipped NATS configuration {} is missing", config.display());
        let passwords: Vec<(String, String)> = BUS_USERS
            .iter()
            .chain(&["admin"])
            .map(|user| ((*user).to_owned(), format!("pw-{user}-{}", uuid::Uuid::new_v4().simple())))
            .collect();
        let ports: Vec<(u16, u16, u16)> = (0..size).map(|_| (free_port(), free_port(), free_port())).collect();
        let routes = format!(
            "[{}]",
            ports.iter().map(|(_, cluster, _)| format!("nats://127.0.0.1:{cluster}")).collect::<Vec<_>>().join(", ")
        );
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        let mut nodes = Vec::new();
        for (i, (client, cluster, monitor)) in ports.iter().enumerate() {
            let name = format!("nats-{}", i + 1);
            let store = dir.join(&name);
            std::fs::create_dir_all(&store).expect("store dir");
            let mut env: Vec<(String, String)> = vec![
                ("NATS_SERVER_NAME".into(), name.clone()),
                ("NATS_LISTEN".into(), format!("127.0.0.1:{client}")),
                ("NATS_HTTP".into(), format!("127.0.0.1:{monitor}")),
                ("NATS_CLUSTER_LISTEN".into(), format!("127.0.0.1:{cluster}")),
                ("NATS_ROUTES".into(), routes.clone()),
                ("NATS_STORE_DIR".into(), store.display().to_string()),
            ];
            env.extend(
                passwords.iter().map(|(user, pw)| (format!("NATS_PASSWORD_{}", user.to_uppercase()), pw.clone())),
            );
            let args: Vec<String> = vec!["-c".into(), config.display().to_string()];
            let proc = Proc::spawn(&name, &bin, &args, &env, &logs);
            nodes.push(NatsNode { name, client_port: *client, monitor_port: *monitor, proc, up: true });
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
        Self { nodes, config_source: format!("shipped {}", config.display()), passwords, http }
    }

    /// `NATS_URL` for the services: every server of the cluster.
    pub fn url(&self) -> String {
        self.nodes.iter().map(|node| format!("nats://127.0.0.1:{}", node.client_port)).collect::<Vec<_>>().join(",")
    }

    /// The password of a bus user.
    pub fn password(&self, user: &str) -> &str {
        &self.passwords.iter().find(|(name, _)| name == user).unwrap_or_else(|| panic!("no NATS user {user}")).1
    }

    /// Waits until every running server has JetStream up and the cluster has a meta leader.
    pub async fn wait_until_ready(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.check_running();
            let mut ready = true;
            for node in self.nodes.iter().filter(|node| node.up) {
                let health = self.get(node, "/healthz?js-enabled-only=true").await;
                let jsz = self.get(node, "/jsz").await;
                let has_leader = jsz.as_ref().is_some_and(|jsz| {
                    self.nodes.len() == 1
                        || jsz["meta_cluster"]["leader"].as_str().is_some_and(|leader| !leader.is_empty())
                });
                ready &= health.is_some() && has_leader;
            }
            if ready {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the NATS cluster is not ready after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails the test when a server exited that was not killed on purpose.
    pub fn check_running(&mut self) {
        for node in self.nodes.iter_mut().filter(|node| node.up) {
            if let Some(status) = node.proc.exited() {
                panic!("{} exited ({status}):\n{}", node.name, node.proc.tail());
            }
        }
    }

    async fn get(&self, node: &NatsNode, path: &str) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}{path}", node.monitor_port);
        let response = self.http.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// The stream as its leader reports it (a server that names itself the leader), from
    /// the servers that are up.
    pub async fn stream(&self) -> Option<StreamView> {
        for node in self.nodes.iter().filter(|node| node.up) {
            let Some(jsz) = self.get(node, "/jsz?accounts=true&streams=true&consumers=true&config=true").await else {
                continue;
            };
            let Some(view) = stream_view(&jsz) else { continue };
            if view.leader == node.name || self.nodes.len() == 1 {
                return Some(view);
            }
        }
        None
    }

    /// `kill -9` of a server; returns when it is gone.
    pub fn kill(&mut self, name: &str) {
        let node = self.node_mut(name);
        node.proc.kill9();
        node.up = false;
    }

    /// Starts a killed server again, on the same ports and store dir.
    pub fn restart(&mut self, name: &str) {
        let node = self.node_mut(name);
        node.proc.restart();
        node.up = true;
    }

    fn node_mut(&mut self, name: &str) -> &mut NatsNode {
        self.nodes.iter_mut().find(|node| node.name == name).unwrap_or_else(|| panic!("no NATS node {name}"))
    }
}

fn stream_view(jsz: &Value) -> Option<StreamView> {
    let stream = jsz["account_details"]
        .as_array()?
        .iter()
        .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
        .find(|stream| stream["name"] == STREAM)?;
    let cluster = &stream["cluster"];
    let leader = cluster["leader"].as_str().unwrap_or("").to_owned();
    if leader.is_empty() && !cluster.is_null() {
        return None;
    }
    let followers = cluster["replicas"]
        .as_array()
        .map(|replicas| {
            replicas
                .iter()
                .map(|replica| {
                    let ok =
                        replica["current"].as_bool().unwrap_or(false) && !replica["offline"].as_bool().unwrap_or(false);
                    (replica["name"].as_str().unwrap_or("?").to_owned(), ok)
                })
                .collect()
        })
        .unwrap_or_default();
    let consumer_leaders = stream["consumer_detail"]
        .as_array()
        .map(|consumers| {
            consumers
                .iter()
                .map(|consumer| {
                    (
                        consumer["name"].as_str().unwrap_or("?").to_owned(),
                        consumer["cluster"]["leader"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Some(StreamView {
        leader,
        num_replicas: stream["config"]["num_replicas"].as_u64().unwrap_or(0),
        followers,
        consumer_leaders,
    })
}

/// The repository's root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}
