//! `bento serve` as one function: [`run`] takes the listeners the caller bound, the loaded
//! [`ServerConfig`] and a shutdown token, and runs what hosts and operators talk to until
//! the token is cancelled or a part fails:
//!
//! - the binary cache (`cache::serve`), its `/metrics` rendering the process's one
//!   metrics registry: the cache's metrics, the SFTP server's and the fleet gauges;
//! - the SFTP server (`sftp::server::serve`), on a runtime of its own at a lower CPU
//!   priority (`apart`), so that report uploads never queue in front of hosts' downloads;
//! - the dashboard (`status::web::serve`), when it has a listener;
//! - the fleet file followed (`reload`): on SIGHUP or when it changes, hosts are added and
//!   removed without dropping the others' sessions;
//! - hosts see a release only once the cache serves its closure (`shown`): the SFTP server
//!   shows each host its release as the cache's last refresh read it, waiting agents are
//!   woken then, and `bento deploy` waits for that too, after waking the cache (`wake`)
//!   so that it refreshes at once instead of at its next poll.
//! - the current rollout advanced (`rollout::drive::follow`) as reports arrive;
//! - with `follow`, the git branch of `[fleet] git` followed (`gitops::follow`), and the
//!   push hook (`POST /hooks/git`) on its own listener.
//!
//! The CLI binds the listeners (so tests can bind `127.0.0.1:0` and call the same function),
//! prints the addresses and keys, and turns signals into the shutdown token.
//!
//! May import: `nix` (keys), `config`, `cache`, `sftp::server`, `status`, `release`,
//! `durable`, `rollout`, `gitops`. It only wires them: each part knows nothing of the others.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use prometheus_client::registry::Registry;

use crate::cache::{self, Access, Cache, CacheConfig, CacheError};
use crate::config::{Fleet, FleetFileError};
use crate::gitops::{self, HookSecret};
use crate::nix::keys::SecretKey;
use crate::rollout;
use crate::sftp::server::{
    self as sftp, HostKey, HostKeyError, HostKeysError, Sessions, SessionsError, SftpConfig,
};
use crate::status::{self, StatusSource};

mod apart;
mod reload;
pub mod shown;
pub mod wake;

/// Longest wait at start for the cache's first view of the publish tree before SFTP opens.
const FIRST_VIEW_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    FleetFile(#[from] FleetFileError),
    #[error(transparent)]
    HostKey(#[from] HostKeyError),
    #[error(transparent)]
    HostKeys(#[from] HostKeysError),
    #[error("cannot start the binary cache")]
    CacheStart(#[source] CacheError),
    #[error("cannot start the SFTP server")]
    SftpStart(#[source] SessionsError),
    #[error("the binary cache stopped")]
    CacheStopped(#[source] CacheError),
    #[error("the SFTP server stopped")]
    SftpStopped(#[source] std::io::Error),
    #[error("the dashboard stopped")]
    DashboardStopped(#[source] std::io::Error),
    #[error("the git hook stopped")]
    HookStopped(#[source] std::io::Error),
    #[error(
        "a hook listener was given but there is no branch to follow: add [fleet] git with hook_secret_file and pass --follow"
    )]
    HookWithoutFollow,
    #[error("a server task panicked; see the log above")]
    TaskPanicked,
}

/// The sockets the server answers on, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// The binary cache (HTTP), reached by hosts.
    pub cache: TcpListener,
    /// The SFTP server (SSH), reached by hosts' agents.
    pub sftp: TcpListener,
    /// The dashboard (HTTP), best kept on loopback; `None` serves no dashboard.
    pub dashboard: Option<TcpListener>,
    /// The git push hook (HTTP, `POST /hooks/git`); needs [`ServerConfig::follow`] with a
    /// secret.
    pub hook: Option<TcpListener>,
}

/// `bento serve --follow`: the branch of `[fleet] git` is followed and deployed.
#[derive(Debug, Clone)]
pub struct Follow {
    /// The push hook's shared secret (`[fleet] git.hook_secret_file`), when it has one.
    pub hook_secret: Option<HookSecret>,
}

/// What the server needs, loaded and checked before anything listens.
#[derive(Debug)]
pub struct ServerConfig {
    /// The fleet, as loaded from its file (`fleet.file` is followed for changes).
    pub fleet: Fleet,
    /// The fleet key: signs narinfos; its public half verifies releases.
    pub signing_key: SecretKey,
    /// The SFTP server's SSH host key, which agents pin.
    pub host_key: HostKey,
    /// Each host gets a token and may fetch only its own closure.
    pub host_tokens: bool,
    /// NAR bodies sent at once.
    pub max_nar_streams: usize,
    /// Hash every whole NAR while sending it.
    pub verify_sends: bool,
    /// The cache port's connection caps, NAR stream shares and timeouts.
    pub limits: cache::Limits,
    /// When set, `/metrics` needs `Authorization: Bearer <this>`.
    pub metrics_token: Option<String>,
    /// Follow the git branch of `[fleet] git` (`None`: deploys come from `bento deploy`).
    pub follow: Option<Follow>,
}

impl ServerConfig {
    /// Loads the fleet file, the fleet key and the SFTP host key (made on first start, in
    /// the state directory); the other options get the cache's defaults.
    pub fn load(fleet_file: &std::path::Path) -> Result<ServerConfig, ServerError> {
        let fleet = Fleet::load_text_only(fleet_file)?;
        let signing_key = fleet.load_signing_key()?;
        let host_key = sftp::load_or_create_host_key(&fleet.state.ssh_host_key())?;
        let defaults = CacheConfig::new(fleet.state.root(), signing_key.clone());
        Ok(ServerConfig {
            fleet,
            signing_key,
            host_key,
            host_tokens: false,
            max_nar_streams: defaults.max_nar_streams,
            verify_sends: defaults.verify_sends,
            limits: defaults.limits,
            metrics_token: None,
            follow: None,
        })
    }
}

/// Runs the cache, the SFTP server and the dashboard on `listeners` until `shutdown` is
/// cancelled or one of them ends; then stops them all and returns the first failure.
pub async fn run(
    listeners: Listeners,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let ServerConfig {
        fleet,
        signing_key,
        host_key,
        host_tokens,
        max_nar_streams,
        verify_sends,
        limits,
        metrics_token,
        follow,
    } = config;
    let hook_secret = follow.as_ref().and_then(|f| f.hook_secret.as_ref());
    if listeners.hook.is_some() && hook_secret.is_none() {
        return Err(ServerError::HookWithoutFollow);
    }
    let state_dir = fleet.state.root().to_owned();

    let status = StatusSource::new(
        fleet.state.clone(),
        fleet.hosts.keys().cloned().collect(),
        fleet.stale_after_secs,
    );
    let rollout_key = signing_key.clone();
    status.show_rollouts(Arc::new(|state| {
        rollout::record::load(state)
            .ok()
            .flatten()
            .map(|r| r.view())
    }));
    let mut cache_config = CacheConfig::new(&state_dir, signing_key);
    cache_config.max_nar_streams = max_nar_streams;
    cache_config.verify_sends = verify_sends;
    cache_config.limits = limits;
    cache_config.metrics_token = metrics_token;
    if host_tokens {
        cache_config.access = Access::TokenDir;
    }
    let cache = Cache::new(cache_config).map_err(ServerError::CacheStart)?;
    cache.serve_only(fleet.hosts.keys().cloned().collect());
    let releases_shown = cache.releases_shown();

    // Hosts see the releases the cache serves the closures of (see `show_after_refresh`),
    // not the publish tree as it is: the SFTP side's own poll only re-reads that view.
    let sftp_config = SftpConfig {
        release_poll_interval: Duration::from_secs(60),
        ..SftpConfig::default()
    };
    let sessions = Sessions::new(
        &state_dir,
        host_key,
        reload::host_keys(&fleet)?,
        sftp_config,
    )
    .map_err(ServerError::SftpStart)?;
    sessions.show_releases(cache::ShownReleases::default());
    let running = shown::claim(&state_dir);
    // Only the server holding the mark answers deploys' wakes (see `wake`).
    let wake_socket = running.as_ref().and_then(|_| {
        wake::bind(&state_dir)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "cannot bind the wake socket; deploys are seen at the cache's next poll");
            })
            .ok()
    });

    // One registry for the process, rendered on the cache's `/metrics`.
    let mut registry = Registry::default();
    cache.metrics().register(&mut registry);
    sessions.metrics().register(&mut registry);
    status::metrics::FleetGauges::register(&mut registry, status.clone());
    if cache.expose(Arc::new(registry)).is_err() {
        tracing::warn!("the cache's metrics were scraped before the registry was complete");
    }

    tracing::info!(
        cache = %addr(&listeners.cache),
        sftp = %addr(&listeners.sftp),
        dashboard = %listeners.dashboard.as_ref().map_or("off".to_owned(), addr),
        state_dir = %state_dir.display(),
        "serving"
    );

    let mut parts: JoinSet<Result<(), ServerError>> = JoinSet::new();
    let (stop, part) = (shutdown.clone(), cache.clone());
    parts.spawn(async move {
        let served = cache::serve(listeners.cache, part, stop).await;
        served.map_err(ServerError::CacheStopped)
    });
    // Hosts are let in once they can be shown what the cache serves (its first refresh has
    // made closures servable); until then their connections wait in the listen queue.
    let mut first_view = releases_shown.clone();
    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = first_view.changed() => {}
        () = tokio::time::sleep(FIRST_VIEW_WAIT) => tracing::warn!(
            secs = FIRST_VIEW_WAIT.as_secs(),
            "the cache has not loaded the publish tree yet; hosts see no release until it has"
        ),
    }
    sessions.show_releases(first_view.borrow().clone());
    let (stop, part) = (shutdown.clone(), sessions.clone());
    parts.spawn(async move {
        let served = apart::serve(listeners.sftp, part, stop).await;
        served.map_err(ServerError::SftpStopped)
    });
    if let Some(listener) = listeners.dashboard {
        let (stop, part) = (shutdown.clone(), status.clone());
        parts.spawn(async move {
            let served = status::web::serve(listener, part, stop).await;
            served.map_err(ServerError::DashboardStopped)
        });
    }

    let fetch_now = Arc::new(tokio::sync::Notify::new());
    if let Some(listener) = listeners.hook
        && let Some(secret) = follow.as_ref().and_then(|f| f.hook_secret.clone())
    {
        let (stop, wake) = (shutdown.clone(), fetch_now.clone());
        parts.spawn(async move {
            let served = gitops::hook::serve(listener, secret, wake, stop).await;
            served.map_err(ServerError::HookStopped)
        });
    }

    let mut followers = JoinSet::new();
    followers.spawn(rollout::drive::follow(
        fleet.state.clone(),
        rollout_key.clone(),
        fleet.stale_after_secs,
        shutdown.clone(),
    ));
    if follow.is_some() {
        let follower = gitops::Follower {
            server: fleet.clone(),
            key: rollout_key,
            fetch_now,
        };
        followers.spawn(gitops::follow(follower, shutdown.clone()));
    }
    if let Some(socket) = wake_socket {
        followers.spawn(wake::follow(socket, cache.clone(), shutdown.clone()));
    }
    followers.spawn(show_after_refresh(
        releases_shown,
        sessions.clone(),
        state_dir.clone(),
        shutdown.clone(),
    ));
    followers.spawn(reload::follow_fleet_file(
        fleet.file.clone(),
        sessions,
        cache,
        status,
        shutdown.clone(),
    ));

    let mut first_failure = None;
    while let Some(joined) = parts.join_next().await {
        let failure = match joined {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => {
                tracing::error!(error = %e, "server task panicked");
                Some(ServerError::TaskPanicked)
            }
        };
        // The first failure is the caller's to report; later ones (usually consequences)
        // go to the log.
        match failure {
            Some(e) if first_failure.is_some() => {
                tracing::error!(error = %chain(&e), "server stopped");
            }
            Some(e) => first_failure = Some(e),
            None => {}
        }
        // One part ending ends them all.
        shutdown.cancel();
    }
    followers.shutdown().await;
    first_failure.map_or(Ok(()), Err)
}

/// Each time a cache refresh has made closures servable, shows hosts the releases it read
/// (waking agents that wait for a new one) and records their generations for `bento deploy`.
async fn show_after_refresh(
    mut releases: tokio::sync::watch::Receiver<cache::ShownReleases>,
    sessions: Arc<Sessions>,
    state_dir: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    let mut recorded = None;
    loop {
        let now = releases.borrow_and_update().clone();
        sessions.show_releases(now.clone());
        let generations = shown::generations(&now);
        if recorded.as_ref() != Some(&generations) {
            let newer = generations
                .iter()
                .filter(|(host, g)| {
                    recorded
                        .as_ref()
                        .is_none_or(|r| r.get(*host).is_none_or(|old| old < *g))
                })
                .count();
            tracing::info!(hosts = newer, "hosts shown new releases");
            let (dir, record) = (state_dir.clone(), generations.clone());
            let _ = tokio::task::spawn_blocking(move || shown::record(&dir, &record)).await;
            recorded = Some(generations);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = releases.changed() => if changed.is_err() { return },
        }
    }
}

fn addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
}

/// An error and its causes, on one line, for the log.
fn chain(e: &ServerError) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_on_the_listeners_given_until_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("flake.nix"), "{}").unwrap();
        let text = format!(
            "[fleet]\nstate_dir = \"state\"\n\n[hosts.web1]\nssh_key = \"{}\"\n",
            crate::config::tests_support_ssh_key(1)
        );
        let fleet = Fleet::parse(&text, &dir.path().join("bento.toml")).unwrap();
        let config = ServerConfig {
            fleet,
            signing_key: SecretKey::generate("server-test").unwrap(),
            host_key: HostKey::generate(),
            host_tokens: false,
            max_nar_streams: 4,
            verify_sends: false,
            limits: cache::Limits::default(),
            metrics_token: None,
            follow: None,
        };
        let bind = || TcpListener::bind("127.0.0.1:0");
        let listeners = Listeners {
            cache: bind().await.unwrap(),
            sftp: bind().await.unwrap(),
            dashboard: Some(bind().await.unwrap()),
            hook: None,
        };
        let local = |l: &TcpListener| l.local_addr().unwrap();
        let (cache, sftp, dashboard) = (
            local(&listeners.cache),
            local(&listeners.sftp),
            local(listeners.dashboard.as_ref().unwrap()),
        );
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(run(listeners, config, shutdown.clone()));

        let info = get(cache, "/nix-cache-info").await;
        assert!(info.starts_with("HTTP/1.1 200") && info.contains("StoreDir: /nix/store"));
        let status = get(dashboard, "/api/status").await;
        assert!(status.starts_with("HTTP/1.1 200") && status.contains("web1"));
        let mut ssh = TcpStream::connect(sftp).await.unwrap();
        let mut banner = [0u8; 8];
        ssh.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"SSH-2.0-");
        drop(ssh);

        assert!(!server.is_finished(), "the server ended before shutdown");
        shutdown.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(20), server).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
        // Stopped means stopped: the cache no longer answers.
        assert!(TcpStream::connect(cache).await.is_err());
    }
}
