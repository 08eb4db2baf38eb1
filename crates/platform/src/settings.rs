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

    /// NATS server URL (nats://...). Without it the embedded bus in the data dir is used.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,

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

    /// Trust X-Forwarded-For from the proxy in front (for per-client rate limits).
    #[arg(long, env = "TRUST_PROXY", default_value_t = false)]
    pub trust_proxy: bool,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("addr", &self.addr)
            .field("data_dir", &self.data_dir)
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field("nats_url", &self.nats_url)
            .field("nats_stream", &self.nats_stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("jwt_key", &self.jwt_key.as_ref().map(|_| "<set>"))
            .field("jwt_key_file", &self.jwt_key_file)
            .field("session_ttl_seconds", &self.session_ttl_seconds)
            .field("log_format", &self.log_format)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("currency", &self.currency)
            .field("trust_proxy", &self.trust_proxy)
            .finish()
    }
}

const GENERATED_KEY_FILE: &str = "jwt.key";

impl Settings {
    /// Embedded mode: no external database and no external bus.
    pub fn is_embedded(&self) -> bool {
        self.database_url.is_none() && self.nats_url.is_none()
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
        bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    fn settings(data_dir: &Path) -> Settings {
        let mut settings = Cli::parse_from(["test"]).settings;
        settings.data_dir = data_dir.to_owned();
        settings.jwt_key = None;
        settings.jwt_key_file = None;
        settings.database_url = None;
        settings.nats_url = None;
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
