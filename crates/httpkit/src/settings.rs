//! Settings shared by every service, from flags and the environment (flags win).
//!
//! Secrets (`JWT_KEY`) come from the environment or a file, never from code, and are never
//! printed: `Debug` hides them and `--help` does not show their values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Where JetStream keeps the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamStorage {
    File,
    Memory,
}

#[derive(Clone, clap::Args)]
pub struct Settings {
    /// Address to serve HTTP on.
    #[arg(long, env = "TICKETING_ADDR", default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,

    /// Directory for the embedded mode's SQLite files, event bus and generated key.
    #[arg(long, env = "TICKETING_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Database URL (postgres://...). Without it each service keeps a SQLite file in the
    /// data dir. On PostgreSQL each service uses its own schema, named after it.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// PostgreSQL connections this process may open in all, shared by the services it runs
    /// (each gets an equal part, at least one). Default: 4 per service. On SQLite the same
    /// part is each service's number of read-only connections beside its one writer.
    #[arg(long, env = "DATABASE_POOL_SIZE", value_parser = clap::value_parser!(u32).range(1..))]
    pub database_pool_size: Option<u32>,

    /// This process's PostgreSQL connections per service: DATABASE_POOL_SIZE divided among
    /// the services it runs (set by the binary).
    #[arg(skip)]
    pub database_pool_per_service: Option<u32>,

    /// NATS servers, comma-separated (`nats://a:4222,nats://b:4222`; `tls://` for TLS). Without
    /// it the embedded bus in the data dir is used.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,

    /// NATS credentials file (user JWT and nkey seed).
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// NATS user name (with NATS_PASSWORD or NATS_PASSWORD_FILE).
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,

    /// NATS password.
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,

    /// File holding the NATS password, instead of NATS_PASSWORD.
    #[arg(long, env = "NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,

    /// File holding an nkey seed to authenticate to NATS with.
    #[arg(long, env = "NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,

    /// Extra root certificate (PEM) trusted for `tls://` NATS servers.
    #[arg(long, env = "NATS_TLS_CA_FILE")]
    pub nats_tls_ca_file: Option<PathBuf>,

    /// Replicas of the stream, used only when a service creates it (an existing stream is
    /// never changed).
    #[arg(long, env = "NATS_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    pub nats_stream_replicas: u32,

    /// Longest time the stream keeps an event, in seconds (0: forever); used when creating it.
    #[arg(long, env = "NATS_STREAM_MAX_AGE_SECONDS", default_value_t = 0)]
    pub nats_stream_max_age_seconds: u64,

    /// Largest size of the stream in bytes (-1: unlimited); used when creating it.
    #[arg(long, env = "NATS_STREAM_MAX_BYTES", default_value_t = -1, allow_negative_numbers = true)]
    pub nats_stream_max_bytes: i64,

    /// Storage of the stream: file or memory; used when creating it.
    #[arg(long, env = "NATS_STREAM_STORAGE", value_enum, default_value_t = StreamStorage::File)]
    pub nats_stream_storage: StreamStorage,

    /// Seconds after which an unacknowledged event is delivered again (both buses). Handlers
    /// that run longer report progress, so this only bounds how long a crashed consumer's
    /// events wait.
    #[arg(long, env = "ACK_WAIT_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub ack_wait_seconds: u64,

    /// Most events a consumer applies in one transaction: those the bus handed out together
    /// (both buses). 1 applies each event in a transaction of its own.
    #[arg(long, env = "EVENT_BATCH_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub event_batch_size: u16,

    /// Days kept of what only grows: processed-event ids, ended timers, settled embedded-bus
    /// messages (0: forever). Keep it above the stream's age limit.
    #[arg(long, env = "RETENTION_DAYS", default_value_t = 7)]
    pub retention_days: u32,

    /// JetStream stream holding the marketplace's events.
    #[arg(long, env = "NATS_STREAM", default_value = "TICKETING")]
    pub nats_stream: String,

    /// Prefix of every event subject (`<prefix>.ticket.created`).
    #[arg(long, env = "EVENT_SUBJECT_PREFIX", default_value = "ticketing")]
    pub subject_prefix: String,

    /// Secret that signs session tokens (HS256). Required unless embedded.
    #[arg(long, env = "JWT_KEY", hide_env_values = true)]
    pub jwt_key: Option<String>,

    /// File holding the session secret, instead of JWT_KEY.
    #[arg(long, env = "JWT_KEY_FILE")]
    pub jwt_key_file: Option<PathBuf>,

    /// How long a session lasts, in seconds.
    #[arg(long, env = "SESSION_TTL_SECONDS", default_value_t = 7 * 24 * 3600)]
    pub session_ttl_seconds: i64,

    /// Log format: human (default) or json.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// Currency of every price (ISO code; Stripe's decimals apply: 2 for usd, 0 for jpy).
    #[arg(long, env = "CURRENCY", default_value = "usd")]
    pub currency: String,

    /// Treat every socket peer as a proxy and take the client address from the rightmost
    /// X-Forwarded-For entry. Only for a server nobody reaches except through its proxy;
    /// prefer TRUSTED_PROXIES.
    #[arg(long, env = "TRUST_PROXY", default_value_t = false)]
    pub trust_proxy: bool,

    /// Seconds a client has to send a request's headers: from the connection's start, or from
    /// the first byte of a later request on a keep-alive connection.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10)]
    pub http_header_read_timeout_seconds: u64,

    /// Seconds a keep-alive connection may sit idle between requests before it is closed.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_SECONDS", default_value_t = 60)]
    pub http_idle_timeout_seconds: u64,

    /// Seconds a client has to send a request's whole body.
    #[arg(long, env = "HTTP_BODY_READ_TIMEOUT_SECONDS", default_value_t = 30)]
    pub http_body_read_timeout_seconds: u64,

    /// Open connections served at once by this process; beyond it new ones wait in the
    /// listen queue (logged when it happens).
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,

    /// Proxies whose X-Forwarded-For is believed (comma-separated CIDRs or addresses, e.g.
    /// `10.0.0.0/8,fd00::/8`): the client is the rightmost hop outside them.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<crate::client_addr::Cidr>,

    /// Admin address serving `/metrics` (Prometheus), e.g. `0.0.0.0:9100`. Off when unset: it
    /// must not be reachable through the public ingress, so it has its own port.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("addr", &self.addr)
            .field("data_dir", &self.data_dir)
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field("database_pool_size", &self.database_pool_size)
            .field("nats_url", &self.nats_url)
            .field("nats_creds", &self.nats_creds)
            .field("nats_user", &self.nats_user)
            .field("nats_password", &self.nats_password.as_ref().map(|_| "<set>"))
            .field("nats_password_file", &self.nats_password_file)
            .field("nats_nkey_file", &self.nats_nkey_file)
            .field("nats_tls_ca_file", &self.nats_tls_ca_file)
            .field("nats_stream_replicas", &self.nats_stream_replicas)
            .field("nats_stream_max_age_seconds", &self.nats_stream_max_age_seconds)
            .field("nats_stream_max_bytes", &self.nats_stream_max_bytes)
            .field("nats_stream_storage", &self.nats_stream_storage)
            .field("ack_wait_seconds", &self.ack_wait_seconds)
            .field("event_batch_size", &self.event_batch_size)
            .field("retention_days", &self.retention_days)
            .field("nats_stream", &self.nats_stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("jwt_key", &self.jwt_key.as_ref().map(|_| "<set>"))
            .field("jwt_key_file", &self.jwt_key_file)
            .field("session_ttl_seconds", &self.session_ttl_seconds)
            .field("log_format", &self.log_format)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("currency", &self.currency)
            .field("trust_proxy", &self.trust_proxy)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("http_header_read_timeout_seconds", &self.http_header_read_timeout_seconds)
            .field("http_idle_timeout_seconds", &self.http_idle_timeout_seconds)
            .field("http_body_read_timeout_seconds", &self.http_body_read_timeout_seconds)
            .field("http_max_connections", &self.http_max_connections)
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
}

const GENERATED_KEY_FILE: &str = "jwt.key";

impl Settings {
    /// Embedded mode: no external database and no external bus.
    pub fn is_embedded(&self) -> bool {
        self.database_url.is_none() && self.nats_url.is_none()
    }

    /// How long retention keeps rows; `None` keeps them forever (`RETENTION_DAYS=0`).
    pub fn retention(&self) -> Option<std::time::Duration> {
        (self.retention_days > 0).then(|| std::time::Duration::from_secs(u64::from(self.retention_days) * 86_400))
    }

    /// The session secret: `JWT_KEY`, else `JWT_KEY_FILE`, else (embedded mode only) a random
    /// key created once in the data dir.
    pub fn session_secret(&self) -> anyhow::Result<Vec<u8>> {
        if let Some(key) = &self.jwt_key {
            return check_secret(key.as_bytes().to_vec(), "JWT_KEY");
        }
        if let Some(path) = &self.jwt_key_file {
            let key = std::fs::read(path).with_context(|| format!("cannot read JWT_KEY_FILE {}", path.display()))?;
            return check_secret(trim_ascii(key), "JWT_KEY_FILE");
        }
        if !self.is_embedded() {
            bail!("JWT_KEY (or JWT_KEY_FILE) must be set when DATABASE_URL or NATS_URL is given");
        }
        generated_secret(&self.data_dir)
    }
}

impl Settings {
    /// The NATS password: `NATS_PASSWORD`, else the contents of `NATS_PASSWORD_FILE`.
    pub fn nats_password(&self) -> anyhow::Result<Option<String>> {
        if let Some(password) = &self.nats_password {
            return Ok(Some(password.clone()));
        }
        let Some(path) = &self.nats_password_file else { return Ok(None) };
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read NATS_PASSWORD_FILE {}", path.display()))?;
        String::from_utf8(trim_ascii(bytes)).map(Some).context("NATS_PASSWORD_FILE is not UTF-8")
    }
}

fn trim_ascii(bytes: Vec<u8>) -> Vec<u8> {
    bytes.trim_ascii().to_vec()
}

fn check_secret(key: Vec<u8>, source: &str) -> anyhow::Result<Vec<u8>> {
    if key.len() < 32 {
        bail!("{source} must be at least 32 bytes long");
    }
    Ok(key)
}

fn generated_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join(GENERATED_KEY_FILE);
    if let Ok(key) = std::fs::read(&path) {
        return check_secret(trim_ascii(key), &path.display().to_string());
    }
    create_private_dir(data_dir)?;
    let key: String = {
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        hex::encode(bytes)
    };
    write_private(&path, key.as_bytes())?;
    tracing::warn!(path = %path.display(), "JWT_KEY is not set: generated a session key in the data dir (set JWT_KEY in production)");
    Ok(key.into_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot create {}", path.display()))
}

/// Creates the data dir readable by its owner only: it holds password hashes and the key.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).with_context(|| format!("cannot create data dir {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(data_dir: &Path) -> Settings {
        let mut settings: Settings = testkit::defaults();
        settings.data_dir = data_dir.to_owned();
        settings
    }

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("ticketing-settings-{}", uuid::Uuid::new_v4().simple()))
    }

    #[test]
    fn embedded_mode_generates_a_private_key_once() {
        let dir = temp_dir();
        let settings = settings(&dir);
        let first = settings.session_secret().unwrap();
        assert_eq!(settings.session_secret().unwrap(), first, "the key is reused, not regenerated");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(GENERATED_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn outside_embedded_mode_a_missing_or_short_key_is_an_error() {
        let dir = temp_dir();
        let mut settings = settings(&dir);
        settings.nats_url = Some("nats://127.0.0.1:4222".into());
        let err = settings.session_secret().unwrap_err().to_string();
        assert!(err.contains("JWT_KEY"), "{err}");
        assert!(!dir.exists(), "no key is generated outside embedded mode");
        settings.jwt_key = Some("too short".into());
        assert!(settings.session_secret().is_err());
        settings.jwt_key = Some("k".repeat(32));
        assert_eq!(settings.session_secret().unwrap(), "k".repeat(32).into_bytes());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut settings = settings(Path::new("/tmp"));
        settings.jwt_key = Some("super-secret-session-key-of-32-bytes".into());
        settings.database_url = Some("postgres://user:hunter2@db/ticketing".into());
        let printed = format!("{settings:?}");
        assert!(!printed.contains("super-secret") && !printed.contains("hunter2"), "{printed}");
    }
}
