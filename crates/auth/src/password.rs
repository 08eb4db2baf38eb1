//! Password hashing: argon2id with OWASP's minimum parameters (19 MiB, 2 passes, 1 lane).

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes on the blocking pool.
pub async fn hash(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        argon2().hash_password(password.as_bytes(), &salt).map(|hash| hash.to_string())
    })
    .await?
    .map_err(|err| anyhow::anyhow!("cannot hash password: {err}"))
}

/// Verifies on the blocking pool. With no stored hash (unknown email), verifies against a
/// dummy hash anyway, so both failures take the same time.
pub async fn verify(password: String, stored: Option<String>) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| dummy_hash().to_owned());
        let parsed = PasswordHash::new(&stored).map_err(|err| anyhow::anyhow!("stored hash is malformed: {err}"))?;
        let matches = argon2().verify_password(password.as_bytes(), &parsed).is_ok();
        Ok(known && matches)
    })
    .await?
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        argon2().hash_password(b"not a password anyone has", &salt).expect("hashing a constant works").to_string()
    })
}

pub fn warm_up() {
    dummy_hash();
}
