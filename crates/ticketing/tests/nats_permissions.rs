//! The shipped NATS configuration (`deploy/k8s/nats/`) makes a bus only the services can
//! write to.
//!
//! Starts a real three-node nats-server cluster on loopback with the shipped `nats.conf` and
//! `auth.conf` (fresh ports and store dirs, the node specifics in the environment exactly as
//! the StatefulSet sets them), then shows, through the real client:
//! - every service user can create the replicated stream (R3), create its own durable
//!   consumer, publish its own subjects and pull and acknowledge through its consumer;
//! - a forged event is refused: orders publishing `ticketing.payment.created` gets no stream
//!   ack, the server reports a permissions violation, and the stream never holds it; nor may
//!   orders pull from or create payments' consumer, or delete the stream;
//! - a client without credentials, or with a wrong password, is refused at connect;
//! - the operator's `admin` user may change the stream (as `nats stream edit` does);
//! - the config holds no password: nats-server refuses to start when one is missing from
//!   its environment.
//!
//! The servers are killed when the test ends, whatever happens (`Cluster`'s `Drop`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::ServerAddr;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, Context as JetStream};
use futures::StreamExt;
use testkit::{TempDir, eventually};

const SERVICES: [&str; 5] = ["auth", "tickets", "orders", "expiration", "payments"];
const STREAM: &str = "TICKETING";

/// The subject each service publishes in this test: one of its own aggregate's.
fn own_subject(service: &str) -> &'static str {
    match service {
        "auth" => "ticketing.session.revoked",
        "tickets" => "ticketing.ticket.created",
        "orders" => "ticketing.order.created",
        "expiration" => "ticketing.expiration.complete",
        "payments" => "ticketing.payment.created",
        other => panic!("unknown service {other}"),
    }
}

fn password(service: &str) -> String {
    format!("test-password-of-{service}")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn config_dir() -> PathBuf {
    repo_root().join("deploy/k8s/nats")
}

/// nats-server 2.12: `NATS_SERVER_BIN` (set by scripts/test-deps), else the copy
/// scripts/test-deps installs in the repository's `.tools`.
fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return bin.into();
    }
    let installed = repo_root().join(".tools/venv/bin/nats-server");
    assert!(
        installed.exists(),
        "NATS_SERVER_BIN is not set and {} does not exist: run the suite with scripts/test \
         (scripts/test-deps installs nats-server 2.12)",
        installed.display()
    );
    installed
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local addr").port()
}

/// The environment nats.conf reads, for one node.
struct Node {
    name: String,
    client: u16,
    http: u16,
    route: u16,
    store: PathBuf,
}

/// Three nats-server processes, killed on drop.
struct Cluster {
    children: Vec<Child>,
    nodes: Vec<Node>,
    dir: TempDir,
}

impl Cluster {
    fn start() -> Self {
        let dir = TempDir::new();
        let nodes: Vec<Node> = (1..=3)
            .map(|i| Node {
                name: format!("n{i}"),
                client: free_port(),
                http: free_port(),
                route: free_port(),
                store: dir.path().join(format!("n{i}")),
            })
            .collect();
        let routes = format!(
            "[{}]",
            nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.route)).collect::<Vec<_>>().join(", ")
        );
        let mut cluster = Cluster { children: Vec::new(), nodes: Vec::new(), dir };
        for node in &nodes {
            let log = std::fs::File::create(cluster.dir.path().join(format!("{}.log", node.name))).expect("log file");
            let mut command = server_command(node, &routes);
            command.stdout(Stdio::null()).stderr(log);
            cluster.children.push(command.spawn().expect("cannot start nats-server"));
        }
        cluster.nodes = nodes;
        cluster
    }

    /// Every node, as a service gets them (NATS_URL is a list).
    fn servers(&self) -> Vec<ServerAddr> {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client).parse().expect("server address")).collect()
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", n.name))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!("--- {} ---\n{}", n.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("nats-server logs:\n{}", self.logs());
        }
    }
}

/// `nats-server -c deploy/k8s/nats/nats.conf` with one node's environment and every
/// service's password, as the StatefulSet runs it.
fn server_command(node: &Node, routes: &str) -> Command {
    let mut command = Command::new(nats_server_bin());
    command
        .arg("-c")
        .arg(config_dir().join("nats.conf"))
        .env_clear()
        .env("NATS_SERVER_NAME", &node.name)
        .env("NATS_LISTEN", format!("127.0.0.1:{}", node.client))
        .env("NATS_HTTP", format!("127.0.0.1:{}", node.http))
        .env("NATS_CLUSTER_LISTEN", format!("127.0.0.1:{}", node.route))
        .env("NATS_ROUTES", routes)
        .env("NATS_STORE_DIR", &node.store);
    for user in SERVICES.iter().chain(&["admin"]) {
        command.env(format!("NATS_PASSWORD_{}", user.to_uppercase()), password(user));
    }
    command
}

/// Server errors the client was told about (permissions violations arrive this way).
type Errors = Arc<Mutex<Vec<String>>>;

async fn connect_as(
    url: &[ServerAddr],
    user: &str,
    password: &str,
) -> Result<(async_nats::Client, Errors), async_nats::ConnectError> {
    let errors: Errors = Arc::default();
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user.to_owned(), password.to_owned())
        .connection_timeout(Duration::from_secs(2))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(err) = event {
                    seen.lock().unwrap().push(err.to_string());
                }
            }
        })
        .connect(url.to_vec())
        .await?;
    Ok((client, errors))
}

fn jetstream(client: &async_nats::Client, timeout: Duration) -> JetStream {
    jetstream::ContextBuilder::new().timeout(timeout).build(client.clone())
}

/// The stream as the services create it when it is missing (NATS_STREAM_REPLICAS=3).
fn stream_config() -> stream::Config {
    stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["ticketing.>".to_owned()],
        storage: StorageType::File,
        num_replicas: 3,
        max_age: Duration::from_secs(604_800),
        ..Default::default()
    }
}

/// Service `i` consumes what the next one publishes, so every consumer has one message.
fn consumed_by(i: usize) -> &'static str {
    own_subject(SERVICES[(i + 1) % SERVICES.len()])
}

fn consumer_config(service: &str, filter: &str, single_filter: bool) -> pull::Config {
    let mut config = pull::Config {
        durable_name: Some(service.to_owned()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(5),
        ..Default::default()
    };
    // Both request forms: `CONSUMER.CREATE.<stream>.<name>.<filter>` for one filter and
    // `CONSUMER.CREATE.<stream>.<name>` for a list (what the services send).
    if single_filter {
        config.filter_subject = filter.to_owned();
    } else {
        config.filter_subjects = vec![filter.to_owned()];
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_each_service_may_publish_its_own_events_on_the_shipped_nats_cluster() {
    let started = Instant::now();
    let cluster = Cluster::start();
    let url = cluster.servers();

    // The cluster is up once JetStream has a meta leader and can place an R3 stream: the
    // first service to start creates the stream (tickets here; any could).
    let last_error = Mutex::new(String::new());
    let connected = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match connect_as(&url, "tickets", &password("tickets")).await {
                Ok(connected) => break connected,
                Err(err) => *last_error.lock().unwrap() = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let (tickets, _) = connected
        .unwrap_or_else(|_| panic!("the cluster did not accept tickets in 30 s: {}", last_error.lock().unwrap()));
    let js = jetstream(&tickets, Duration::from_secs(5));
    let created = eventually(Duration::from_secs(30), "JetStream to create the R3 stream", || async {
        js.get_or_create_stream(stream_config()).await.ok()
    })
    .await;
    assert_eq!(created.cached_info().config.num_replicas, 3);
    let cluster_ready = started.elapsed();

    // Every service: connect, look up the existing stream, create its consumer, publish.
    let mut clients = Vec::new();
    for (i, service) in SERVICES.iter().enumerate() {
        let (client, errors) = connect_as(&url, service, &password(service))
            .await
            .unwrap_or_else(|err| panic!("{service} cannot connect with its password: {err}"));
        let js = jetstream(&client, Duration::from_secs(5));
        js.query_account().await.unwrap_or_else(|err| panic!("{service}: $JS.API.INFO refused: {err}"));
        let stream = js
            .get_or_create_stream(stream_config())
            .await
            .unwrap_or_else(|err| panic!("{service} cannot look up the stream: {err}"));
        let consumer: PullConsumer = stream
            .create_consumer(consumer_config(service, consumed_by(i), i % 2 == 0))
            .await
            .unwrap_or_else(|err| panic!("{service} cannot create its durable consumer: {err}"));
        let ack = js
            .publish(own_subject(service), format!("from {service}").into())
            .await
            .unwrap_or_else(|err| panic!("{service} cannot publish {}: {err}", own_subject(service)))
            .await
            .unwrap_or_else(|err| panic!("{service} got no stream ack for {}: {err}", own_subject(service)));
        assert_eq!(ack.stream, STREAM);
        clients.push((*service, client, errors, js, stream, consumer));
    }

    // Every service pulls the one message its consumer filters, and acknowledges it (a
    // double ack: the server confirms it, so a refused ack subject would fail here).
    for (i, (service, _, errors, _, _, consumer)) in clients.iter_mut().enumerate() {
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(3))
            .messages()
            .await
            .unwrap_or_else(|err| panic!("{service} cannot pull from its consumer: {err}"));
        let message = batch
            .next()
            .await
            .unwrap_or_else(|| panic!("{service}'s pull ended without a message"))
            .unwrap_or_else(|err| panic!("{service}'s pull failed: {err}"));
        assert_eq!(message.subject.as_str(), consumed_by(i));
        let from = SERVICES[(i + 1) % SERVICES.len()];
        assert_eq!(message.payload.as_ref(), format!("from {from}").as_bytes());
        message.double_ack().await.unwrap_or_else(|err| panic!("{service} cannot acknowledge: {err}"));
        let info = consumer.info().await.unwrap_or_else(|err| panic!("{service}: consumer info: {err}"));
        assert_eq!((info.num_ack_pending, info.num_pending), (0, 0), "{service}'s consumer after its ack");
        assert!(errors.lock().unwrap().is_empty(), "{service} was refused something: {:?}", errors.lock().unwrap());
    }

    // Forgery: orders publishes a payment. The server refuses the publish, so no stream
    // ack comes and the stream never stores it.
    let (_, orders, orders_errors, _, _, _) = clients.iter().find(|c| c.0 == "orders").expect("orders client");
    let impatient = jetstream(orders, Duration::from_millis(1500));
    let forged = async { impatient.publish("ticketing.payment.created", "forged by orders".into()).await?.await };
    let forged = forged.await;
    assert!(forged.is_err(), "a payment:created forged by orders was acknowledged: {forged:?}");
    let violation = "Permissions Violation for Publish to \"ticketing.payment.created\"";
    eventually(Duration::from_secs(5), "the server to report orders' permissions violation", || async {
        orders_errors.lock().unwrap().iter().any(|e| e.contains(violation)).then_some(())
    })
    .await;

    // Nor may orders read payments' consumer, create one in its name, or drop the stream.
    for (subject, what) in [
        ("$JS.API.CONSUMER.MSG.NEXT.TICKETING.payments", "pull from payments' consumer"),
        ("$JS.API.CONSUMER.CREATE.TICKETING.payments", "create payments' consumer"),
        ("$JS.API.STREAM.DELETE.TICKETING", "delete the stream"),
        ("$JS.API.STREAM.UPDATE.TICKETING", "change the stream's replicas or limits"),
    ] {
        let refused = tokio::time::timeout(Duration::from_millis(1500), orders.request(subject, "{}".into())).await;
        assert!(!matches!(refused, Ok(Ok(_))), "orders may {what}: {refused:?}");
        eventually(Duration::from_secs(5), &format!("the server to refuse orders to {what}"), || async {
            let needle = format!("Permissions Violation for Publish to \"{subject}\"");
            orders_errors.lock().unwrap().iter().any(|e| e.contains(&needle)).then_some(())
        })
        .await;
    }

    // The stream holds the five genuine events and not the forged one.
    let (_, _, _, payments_js, _, _) = clients.iter().find(|c| c.0 == "payments").expect("payments client");
    let mut stream = payments_js.get_stream(STREAM).await.expect("payments looks the stream up");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.state.messages, 5, "the stream holds exactly the five genuine events");
    assert_eq!(info.config.num_replicas, 3);
    let payments_consumer = stream.get_consumer::<pull::Config>("payments").await.expect("payments' consumer");
    let mut payments_consumer = payments_consumer;
    let consumer_info = payments_consumer.info().await.expect("payments' consumer info");
    assert_eq!(consumer_info.num_pending, 0, "payments' consumer sees no forged event");

    // The operator's admin user may change the stream (what `nats stream edit` does), and
    // the change sticks: here the retention, which no service may touch.
    let (admin, admin_errors) = connect_as(&url, "admin", &password("admin")).await.expect("admin connects");
    let admin_js = jetstream(&admin, Duration::from_secs(5));
    let mut config = stream_config();
    config.max_age = Duration::from_secs(3 * 86_400);
    let updated = admin_js.update_stream(config).await.expect("admin updates the stream");
    assert_eq!((updated.config.max_age, updated.config.num_replicas), (Duration::from_secs(3 * 86_400), 3));
    assert!(admin_errors.lock().unwrap().is_empty(), "admin was refused: {:?}", admin_errors.lock().unwrap());

    // Anonymous and wrong-password clients are refused at connect.
    let anonymous =
        async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2)).connect(url.clone()).await;
    match anonymous {
        Err(err) => assert_eq!(err.kind(), async_nats::ConnectErrorKind::AuthorizationViolation, "{err}"),
        Ok(_) => panic!("an anonymous client was let in"),
    }
    match connect_as(&url, "payments", "not-the-password").await {
        Err(err) => assert_eq!(err.kind(), async_nats::ConnectErrorKind::AuthorizationViolation, "{err}"),
        Ok(_) => panic!("a wrong password was accepted for payments"),
    }
    // A password is per user: orders' password does not open payments.
    match connect_as(&url, "payments", &password("orders")).await {
        Err(err) => assert_eq!(err.kind(), async_nats::ConnectErrorKind::AuthorizationViolation, "{err}"),
        Ok(_) => panic!("orders' password was accepted for payments"),
    }

    eprintln!(
        "nats_permissions: 3-node cluster ready (R3 stream created) in {cluster_ready:?}; whole check {:?}",
        started.elapsed()
    );
}

#[test]
fn the_nats_config_holds_no_password_and_refuses_to_start_without_one() {
    let auth = std::fs::read_to_string(config_dir().join("auth.conf")).expect("auth.conf");
    let mut users = 0;
    for line in auth.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        if let Some(value) = line.strip_prefix("password:") {
            users += 1;
            assert!(value.trim().starts_with("$NATS_PASSWORD_"), "a password is not from the environment: {line}");
        }
        assert!(!line.contains("no_auth_user"), "auth.conf lets anonymous clients in: {line}");
    }
    assert_eq!(users, SERVICES.len() + 1, "one user per service, and the operator's admin");

    // Every variable set: the configuration is valid (`-t` checks it without starting).
    let dir = TempDir::new();
    let node = Node {
        name: "n1".to_owned(),
        client: free_port(),
        http: free_port(),
        route: free_port(),
        store: dir.path().join("n1"),
    };
    let routes = "[nats://127.0.0.1:1, nats://127.0.0.1:2]";
    let valid = server_command(&node, routes).arg("-t").output().expect("run nats-server -t");
    assert!(valid.status.success(), "nats.conf is not valid: {}", String::from_utf8_lossy(&valid.stderr));

    // One password missing: nats-server refuses the configuration and names the variable.
    let refused = server_command(&node, routes)
        .env_remove("NATS_PASSWORD_PAYMENTS")
        .arg("-t")
        .output()
        .expect("run nats-server -t");
    let said = format!("{}{}", String::from_utf8_lossy(&refused.stdout), String::from_utf8_lossy(&refused.stderr));
    assert!(!refused.status.success(), "nats-server accepted a config without payments' password: {said}");
    assert!(said.contains("NATS_PASSWORD_PAYMENTS"), "the refusal does not name the variable: {said}");
}
