//! The Kubernetes manifests (`deploy/k8s`) render and validate offline, and say what
//! docs/deploy.md promises.
//!
//! `scripts/deploy-deps --manifests` provides kustomize (`kubectl kustomize`) and
//! `kubernetes-validate`; the rendered output must pass `kubernetes-validate --strict`
//! (unknown fields rejected; a deliberately broken copy must fail, so the check is not a
//! no-op). The rendered objects are then read as JSON (PyYAML from the validator's venv) and
//! checked: replicas, spread, disruption budgets, autoscalers, probes, security contexts,
//! secrets as files, per-service NATS users, stream settings, NetworkPolicies, the
//! migrations Job, and the PostgreSQL connection budget rule.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BUS_SERVICES: [&str; 5] = ["auth", "tickets", "orders", "expiration", "payments"];
const ALL_SERVICES: [&str; 6] = ["auth", "tickets", "orders", "expiration", "payments", "web"];
/// PostgreSQL's default max_connections, less its superuser_reserved_connections (3).
const POSTGRES_USABLE_CONNECTIONS: i64 = 100 - 3;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `export NAME=value` lines of scripts/deploy-deps, as a map (values are shell-quoted
/// with printf %q; ours hold only `\ ` escapes).
fn deploy_deps() -> BTreeMap<String, String> {
    let output = Command::new(root().join("scripts/deploy-deps"))
        .arg("--manifests")
        .output()
        .expect("cannot run scripts/deploy-deps");
    assert!(output.status.success(), "scripts/deploy-deps failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.replace("\\ ", " ")))
        .collect()
}

fn run(command: &str, args: &[&str]) -> std::process::Output {
    let mut parts = command.split(' ');
    let program = parts.next().expect("a command");
    Command::new(program).args(parts).args(args).output().unwrap_or_else(|err| panic!("cannot run {command}: {err}"))
}

struct Rendered {
    yaml: String,
    objects: Vec<Value>,
    validator: String,
    dir: testkit::TempDir,
}

fn render() -> Rendered {
    let deps = deploy_deps();
    let kustomize = deps.get("DEPLOY_KUSTOMIZE").expect("DEPLOY_KUSTOMIZE");
    let validator = deps.get("KUBERNETES_VALIDATE").expect("KUBERNETES_VALIDATE").clone();
    let out = run(kustomize, &[root().join("deploy/k8s").to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{kustomize} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).expect("utf-8 manifests");

    // YAML -> JSON with the PyYAML that kubernetes-validate brings along.
    let python = Path::new(&validator).with_file_name("python3");
    let dir = testkit::TempDir::new();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &yaml).expect("write rendered manifests");
    let json = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
            file.to_str().expect("utf-8 path"),
        ])
        .output()
        .expect("cannot run the validator's python");
    assert!(json.status.success(), "YAML -> JSON failed: {}", String::from_utf8_lossy(&json.stderr));
    let objects: Vec<Value> = serde_json::from_slice(&json.stdout).expect("rendered manifests as JSON");
    Rendered { yaml, objects, validator, dir }
}

impl Rendered {
    fn find(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the manifests"))
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// A generated ConfigMap, whatever its hash suffix.
    fn config_map(&self, prefix: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| {
                o["kind"] == "ConfigMap"
                    && o["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(&format!("{prefix}-")))
            })
            .unwrap_or_else(|| panic!("no ConfigMap {prefix}-<hash>"))
    }

    fn validate(&self, yaml: &str) -> std::process::Output {
        let file = self.dir.path().join(format!("validate-{}.yaml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&file, yaml).expect("write manifests");
        run(&self.validator, &["--strict", "--quiet", file.to_str().expect("utf-8 path")])
    }
}

fn env_of(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .map(|env| env.iter().map(|e| (e["name"].as_str().expect("env name").to_owned(), e.clone())).collect())
        .unwrap_or_default()
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector["matchLabels"].as_object().is_some_and(|m| m.iter().all(|(k, v)| &labels[k] == v))
}

#[test]
fn the_manifests_render_and_pass_strict_validation() {
    let rendered = render();
    let valid = rendered.validate(&rendered.yaml);
    assert!(
        valid.status.success(),
        "kubernetes-validate --strict rejected the manifests:\n{}{}",
        String::from_utf8_lossy(&valid.stdout),
        String::from_utf8_lossy(&valid.stderr)
    );
    // The validator is strict: an unknown field in a Deployment's spec fails it.
    let broken = rendered.yaml.replacen("  replicas: 2\n", "  replicas: 2\n  replicaz: 2\n", 1);
    assert_ne!(broken, rendered.yaml);
    assert!(!rendered.validate(&broken).status.success(), "kubernetes-validate --strict accepted an unknown field");
}

#[test]
fn every_service_is_replicated_spread_budgeted_probed_and_locked_down() {
    let rendered = render();
    let pdbs = rendered.all("PodDisruptionBudget");
    for name in ALL_SERVICES {
        let deployment = rendered.find("Deployment", name);
        let spec = &deployment["spec"];
        let pod = &spec["template"]["spec"];
        let labels = &spec["template"]["metadata"]["labels"];
        assert!(spec["replicas"].as_i64() >= Some(2), "{name}: fewer than two replicas");
        assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], 1, "{name}: surge");
        assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0, "{name}: unavailable in a rollout");
        let spread = pod["topologySpreadConstraints"].as_array().expect("topologySpreadConstraints");
        assert!(
            spread.iter().any(|c| c["topologyKey"] == "kubernetes.io/hostname" && selects(&c["labelSelector"], labels)),
            "{name}: replicas not spread over nodes"
        );
        assert!(
            pdbs.iter().any(|p| selects(&p["spec"]["selector"], labels) && p["spec"]["maxUnavailable"] == 1),
            "{name}: no PodDisruptionBudget"
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}: runAsNonRoot");
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}: service account token");
        let containers = pod["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1);
        let container = &containers[0];
        assert_eq!(container["args"], serde_json::json!(["serve", name]));
        let security = &container["securityContext"];
        assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}");
        assert!(container["resources"]["requests"]["cpu"].is_string(), "{name}: cpu request");
        assert!(container["resources"]["requests"]["memory"].is_string(), "{name}: memory request");
        assert!(container["resources"]["limits"]["memory"].is_string(), "{name}: memory limit");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}: liveness");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}: readiness");

        // Secrets as files: no secret value in an env var, only *_FILE paths and the
        // DATABASE_URL reference.
        let env = env_of(container);
        for secret in ["JWT_KEY", "STRIPE_KEY", "NATS_PASSWORD"] {
            assert!(!env.contains_key(secret), "{name}: {secret} in the environment, not a file");
        }
        assert_eq!(env["JWT_KEY_FILE"]["value"], "/run/secrets/ticketing/jwt-key", "{name}");
        let volumes = pod["volumes"].as_array().expect("volumes");
        let secret_volume = volumes.iter().find(|v| v["name"] == "secrets").expect("secrets volume");
        let mut keys: Vec<&str> = secret_volume["secret"]["items"]
            .as_array()
            .expect("secret items")
            .iter()
            .map(|i| i["key"].as_str().expect("key"))
            .collect();
        keys.sort_unstable();
        let password_key = format!("NATS_PASSWORD_{}", name.to_uppercase());
        let mut want = vec!["JWT_KEY"];
        if BUS_SERVICES.contains(&name) {
            want.push(&password_key);
            assert_eq!(env["NATS_USER"]["value"], name, "{name}: its own NATS user");
            assert_eq!(env["NATS_PASSWORD_FILE"]["value"], "/run/secrets/ticketing/nats-password");
            assert_eq!(env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"], "DATABASE_URL", "{name}");
        } else {
            assert!(!env.contains_key("DATABASE_URL") && !env.contains_key("NATS_USER"), "web uses no database or bus");
        }
        if name == "payments" {
            want.push("STRIPE_KEY");
            assert_eq!(env["PAYMENT_GATEWAY"]["value"], "stripe");
            assert_eq!(env["STRIPE_KEY_FILE"]["value"], "/run/secrets/ticketing/stripe-key");
        }
        want.sort_unstable();
        assert_eq!(keys, want, "{name}: the secret keys it gets (only its own)");
    }

    // Autoscalers for orders and tickets.
    for name in ["orders", "tickets"] {
        let hpa = rendered.find("HorizontalPodAutoscaler", name);
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], name);
        assert_eq!(hpa["spec"]["minReplicas"], 2);
    }

    // The migrations Job.
    let job = rendered.find("Job", "migrate");
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"], serde_json::json!(["migrate"]));
    assert_eq!(env_of(container)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"], "ticketing-secrets");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
}

#[test]
fn the_connection_budget_keeps_postgres_under_its_default_limit() {
    let rendered = render();
    let config = &rendered.config_map("ticketing-config")["data"];
    let pool: i64 = config["DATABASE_POOL_SIZE"].as_str().expect("DATABASE_POOL_SIZE").parse().expect("a number");
    assert_eq!(pool, 4);
    // The rule (docs/deploy.md): every database service may run its replicas plus two more
    // (a rollout's surge pod, an autoscaled or hand-added replica) at `pool` connections
    // each, plus the migrations Job, within PostgreSQL's usable connections.
    let mut budget = 0;
    for name in BUS_SERVICES {
        let deployment = rendered.find("Deployment", name);
        let replicas = deployment["spec"]["replicas"].as_i64().expect("replicas");
        let ceiling = replicas + 2;
        let surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"].as_i64().expect("maxSurge");
        if let Some(hpa) = rendered.all("HorizontalPodAutoscaler").into_iter().find(|h| h["metadata"]["name"] == name) {
            let max = hpa["spec"]["maxReplicas"].as_i64().expect("maxReplicas");
            assert!(max <= ceiling, "{name}: the autoscaler may exceed the budget ({max} > {ceiling})");
        }
        assert!(replicas + surge <= ceiling, "{name}: a rollout exceeds the budget");
        budget += ceiling * pool;
    }
    assert_eq!(budget, 80, "5 services x (2 + 2) x 4");
    let with_job = budget + pool;
    assert!(
        with_job <= POSTGRES_USABLE_CONNECTIONS,
        "{with_job} connections at most, PostgreSQL allows {POSTGRES_USABLE_CONNECTIONS}"
    );
    eprintln!(
        "connection budget: {budget} for the services + {pool} for the Job = {with_job} of {POSTGRES_USABLE_CONNECTIONS}"
    );
}

#[test]
fn nats_is_a_three_node_fsync_cluster_with_per_service_users_reachable_only_by_the_services() {
    let rendered = render();
    let nats = rendered.find("StatefulSet", "nats");
    assert_eq!(nats["spec"]["replicas"], 3);
    let pod = &nats["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert!(container["image"].as_str().expect("image").contains("@sha256:"), "the NATS image is pinned by digest");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let env = env_of(container);
    for user in BUS_SERVICES.iter().chain(&["admin"]) {
        let name = format!("NATS_PASSWORD_{}", user.to_uppercase());
        assert_eq!(env[&name]["valueFrom"]["secretKeyRef"]["key"], name.as_str(), "{name} from the Secret");
    }
    assert_eq!(env["NATS_SERVER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    let routes = env["NATS_ROUTES"]["value"].as_str().expect("routes");
    for i in 0..3 {
        assert!(routes.contains(&format!("nats://nats-{i}.nats-headless:6222")), "route to node {i}: {routes}");
    }
    let pdb = rendered.find("PodDisruptionBudget", "nats");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "one NATS node at a time keeps the quorum");

    // The ConfigMap carries the shipped files as they are.
    let files = &rendered.config_map("nats-config")["data"];
    for file in ["nats.conf", "auth.conf"] {
        let shipped = std::fs::read_to_string(root().join("deploy/k8s/nats").join(file)).expect("shipped file");
        assert_eq!(files[file].as_str(), Some(shipped.as_str()), "{file} in the ConfigMap");
    }
    let conf = files["nats.conf"].as_str().expect("nats.conf");
    assert!(conf.contains("sync_interval: always"), "JetStream fsyncs every write");
    assert!(conf.contains("include ./auth.conf"));

    // The services create the stream replicated and bounded.
    let bus = &rendered.config_map("ticketing-bus")["data"];
    assert_eq!(bus["NATS_STREAM_REPLICAS"], "3");
    assert_eq!(bus["NATS_STREAM_MAX_AGE_SECONDS"], "604800");
    let urls = bus["NATS_URL"].as_str().expect("NATS_URL");
    assert_eq!(urls.split(',').count(), 3, "NATS_URL lists every node: {urls}");

    // NetworkPolicies: default deny; NATS's client port only from the bus services, its
    // route port only from NATS; PostgreSQL only from the database services and the Job.
    let deny = rendered.find("NetworkPolicy", "default-deny-ingress");
    assert_eq!(deny["spec"]["podSelector"], serde_json::json!({}));
    assert_eq!(deny["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    assert!(deny["spec"]["ingress"].is_null(), "default deny allows nothing");
    let allowed_from = |policy: &str, port: i64| -> Vec<String> {
        let policy = rendered.find("NetworkPolicy", policy);
        let mut names = Vec::new();
        for rule in policy["spec"]["ingress"].as_array().expect("ingress rules") {
            if !rule["ports"].as_array().expect("ports").iter().any(|p| p["port"] == port) {
                continue;
            }
            for peer in rule["from"].as_array().expect("from") {
                let selector = &peer["podSelector"];
                assert!(peer["namespaceSelector"].is_null(), "{peer}: from other namespaces");
                if let Some(name) = selector["matchLabels"]["app.kubernetes.io/name"].as_str() {
                    names.push(name.to_owned());
                }
                for expression in selector["matchExpressions"].as_array().into_iter().flatten() {
                    assert_eq!(expression["operator"], "In");
                    names.extend(
                        expression["values"]
                            .as_array()
                            .expect("values")
                            .iter()
                            .map(|v| v.as_str().expect("name").to_owned()),
                    );
                }
            }
        }
        names.sort();
        names
    };
    let mut bus_clients: Vec<String> = BUS_SERVICES.iter().map(|s| (*s).to_owned()).collect();
    bus_clients.push("nats".to_owned());
    bus_clients.sort();
    assert_eq!(allowed_from("nats", 4222), bus_clients, "who reaches NATS's client port");
    assert_eq!(allowed_from("nats", 6222), vec!["nats".to_owned()], "who reaches the route port");
    let mut db_clients: Vec<String> = BUS_SERVICES.iter().map(|s| (*s).to_owned()).collect();
    db_clients.push("migrate".to_owned());
    db_clients.sort();
    assert_eq!(allowed_from("postgres", 5432), db_clients, "who reaches PostgreSQL");
    let public = rendered.find("NetworkPolicy", "http-from-ingress-controller");
    let values = &public["spec"]["podSelector"]["matchExpressions"][0]["values"];
    assert!(!values.as_array().expect("values").iter().any(|v| v == "expiration"), "expiration is not public");
}
