//! Signs a release and writes it to `<state_dir>/publish/<host>/release`, as `bento deploy`
//! will: for the cache benchmark (`scripts/bench-cache.sh`) until deploy exists.
//!
//! Usage: publish_release STATE_DIR SECRET_KEY_FILE HOST GENERATION STORE_PATH

use std::path::PathBuf;

use anyhow::Context as _;
use bento::nix::keys::SecretKey;
use bento::release::Release;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [state_dir, key, host, generation, store_path] = args.as_slice() else {
        anyhow::bail!(
            "usage: publish_release STATE_DIR SECRET_KEY_FILE HOST GENERATION STORE_PATH"
        );
    };
    let key = SecretKey::load(&PathBuf::from(key))?;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let release = Release::sign(host, generation.parse()?, store_path, created, &key)?;
    let dir = PathBuf::from(state_dir).join("publish").join(host);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    bento::durable::write_atomic(&dir.join("release"), &release.to_bytes(), 0o644)?;
    Ok(())
}
