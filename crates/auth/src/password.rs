//! Password hashing: argon2id with OWASP's minimum parameters (19 MiB, 2 passes, 1 lane).
//!
//! Hashes run on a small pool of dedicated threads, one per core, each reusing its own
//! 19 MiB working memory. Two reasons: a burst of sign-ins must not take every core from
//! the rest of the marketplace (they queue here instead), and argon2's per-hash 19 MiB
//! allocations, spread over many blocking threads, made the allocator keep gigabytes
//! (measured: 1.6 GB RSS after a sign-up burst; a few tens of MB with this pool).

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

fn params() -> Params {
    Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters")
}

type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// The hashing threads, started on first use.
fn pool() -> &'static mpsc::Sender<Job> {
    static POOL: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        for index in 0..threads {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || {
                    // Grown on first use, so idle threads hold no memory.
                    let mut memory = Vec::new();
                    loop {
                        let job = match receiver.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&mut memory),
                            Err(_) => return,
                        }
                    }
                })
                .expect("cannot start a password hashing thread");
        }
        sender
    })
}

/// Runs `work` on a hashing thread with its reusable memory.
async fn on_pool<T: Send + 'static>(work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static) -> anyhow::Result<T> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    pool()
        .send(Box::new(move |memory| {
            let _ = reply.send(work(memory));
        }))
        .map_err(|_| anyhow::anyhow!("password hashing threads are gone"))?;
    answer.await.map_err(|_| anyhow::anyhow!("password hashing thread dropped the job"))
}

/// The raw argon2 output for `password` under `hasher`'s settings, computed in `memory`.
fn compute(
    hasher: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &Salt<'_>,
    memory: &mut Vec<Block>,
    len: usize,
) -> anyhow::Result<Output> {
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(|err| anyhow::anyhow!("bad salt: {err}"))?;
    Output::init_with(len, |out| {
        hasher
            .hash_password_into_with_memory(password, salt_bytes, out, &mut memory[..params.block_count()])
            .map_err(|_| argon2::password_hash::Error::Crypto)
    })
    .map_err(|err| anyhow::anyhow!("cannot hash password: {err}"))
}

fn hash_with(memory: &mut Vec<Block>, password: &str) -> anyhow::Result<String> {
    let params = params();
    let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let output = compute(&hasher, &params, password.as_bytes(), &salt.as_salt(), memory, Params::DEFAULT_OUTPUT_LEN)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|err| anyhow::anyhow!("{err}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

fn verify_with(memory: &mut Vec<Block>, password: &str, stored: &str) -> anyhow::Result<bool> {
    let parsed = PasswordHash::new(stored).map_err(|err| anyhow::anyhow!("stored hash is malformed: {err}"))?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        anyhow::bail!("stored hash has no salt or output");
    };
    let params = Params::try_from(&parsed).map_err(|err| anyhow::anyhow!("stored hash parameters: {err}"))?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|err| anyhow::anyhow!("{err}"))?;
    let version = parsed.version.map(Version::try_from).transpose().map_err(|err| anyhow::anyhow!("{err}"))?;
    let hasher = Argon2::new(algorithm, version.unwrap_or_default(), params.clone());
    let computed = compute(&hasher, &params, password.as_bytes(), &salt, memory, expected.len())?;
    // `Output`'s equality is constant-time.
    Ok(computed == expected)
}

/// Hashes `password` into a PHC string.
pub async fn hash(password: String) -> anyhow::Result<String> {
    on_pool(move |memory| hash_with(memory, &password)).await?
}

/// Verifies `password`. With no stored hash (unknown email), verifies against a dummy hash
/// anyway, so both failures take the same time.
pub async fn verify(password: String, stored: Option<String>) -> anyhow::Result<bool> {
    on_pool(move |memory| {
        let known = stored.is_some();
        let stored = match stored {
            Some(stored) => stored,
            None => dummy_hash(memory)?.to_owned(),
        };
        Ok(verify_with(memory, &password, &stored)? && known)
    })
    .await?
}

fn dummy_hash(memory: &mut Vec<Block>) -> anyhow::Result<&'static str> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(hash) = DUMMY.get() {
        return Ok(hash);
    }
    let hash = hash_with(memory, "not a password anyone has")?;
    Ok(DUMMY.get_or_init(|| hash))
}

/// Starts the threads and computes the dummy hash now rather than in the first sign-in.
pub async fn warm_up() {
    let _ = on_pool(|memory| dummy_hash(memory).map(drop)).await;
}

#[cfg(test)]
mod tests {
    use argon2::PasswordVerifier;

    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_interoperate_with_the_argon2_crate() {
        let hashed = hash("correct horse".into()).await.unwrap();
        assert!(hashed.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hashed}");
        assert!(verify("correct horse".into(), Some(hashed.clone())).await.unwrap());
        assert!(!verify("wrong horse".into(), Some(hashed.clone())).await.unwrap());
        assert!(!verify("correct horse".into(), None).await.unwrap());
        // The standard verifier accepts our strings, and we accept its.
        let parsed = PasswordHash::new(&hashed).unwrap();
        let standard = Argon2::new(Algorithm::Argon2id, Version::V0x13, params());
        assert!(standard.verify_password(b"correct horse", &parsed).is_ok());
        let theirs = {
            use argon2::PasswordHasher;
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            standard.hash_password(b"other", &salt).unwrap().to_string()
        };
        assert!(verify("other".into(), Some(theirs)).await.unwrap());
        assert!(verify("x".into(), Some("not a hash".into())).await.is_err());
    }
}
