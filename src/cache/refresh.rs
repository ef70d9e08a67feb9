//! The running cache, [`Cache`]: its configuration, the index it serves now, metrics and the
//! NAR stream limit, and how that index is kept in step with the publish tree
//! ([`Cache::refresh`], [`Cache::watch`]).
//!
//! A refresh runs in two phases so a new closure is servable as soon as its narinfos are
//! signed: (1) read releases, query closures, sign new narinfos (plain NAR) and swap the
//! index in; (2) find or make each missing zstd file (verified by hash before it is
//! trusted), then swap in the index whose narinfos advertise them, and only then show
//! hosts the releases read (`Cache::releases_shown`). Refreshes never overlap.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use rayon::prelude::*;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::CacheError;
use super::access::{self, Access, TOKENS_DIR};
use super::broken::Broken;
use super::compress::{self, FileIdentity, ZstFile};
use super::index::{self, Compressed, Index, ServablePath};
use super::limits::{Limits, StreamPlaces};
use super::metrics::{IndexFigures, Metrics};
use super::scan::{self, Fingerprint};
use super::verified::Verified;
use crate::nix::hash::Sha256Hash;
use crate::nix::keys::{PublicKey, SecretKey};
use crate::nix::pathinfo::{PathInfo, PathInfoError, Store};
use crate::nix::store::{self, StorePath};

/// The closures of `tops`, as path infos: taken from `index` (what the last refresh read)
/// where it has every path, so that a refresh after a deploy asks Nix only about the
/// systems new to it. A published system is a GC root, so neither it nor its closure can
/// leave the store or change registration while it is in the index; a top that is gone
/// from disk anyway is asked about, and Nix's answer (not valid) decides as before.
/// Returns the infos and how many paths Nix was asked about.
fn closure_known_or_asked(
    tops: &[StorePath],
    index: &Index,
) -> Result<(Vec<PathInfo>, usize), PathInfoError> {
    let known = |p: &StorePath| index.get(p.digest()).filter(|e| e.info.path == *p);
    let mut found: HashMap<StorePath, PathInfo> = HashMap::new();
    let mut ask: Vec<StorePath> = Vec::new();
    let mut walk: Vec<StorePath> = Vec::new();
    for top in tops {
        let on_disk = std::fs::symlink_metadata(store::render(top)).is_ok();
        if on_disk && known(top).is_some() {
            walk.push(top.clone());
        } else {
            ask.push(top.clone());
        }
    }
    while let Some(p) = walk.pop() {
        if found.contains_key(&p) {
            continue;
        }
        match known(&p) {
            Some(e) => {
                walk.extend(e.info.references.iter().filter(|r| **r != p).cloned());
                found.insert(p, e.info.clone());
            }
            None => ask.push(p),
        }
    }
    if !ask.is_empty() {
        for info in Store::local().closure(&ask)? {
            found.entry(info.path.clone()).or_insert(info);
        }
    }
    let mut infos: Vec<PathInfo> = found.into_values().collect();
    infos.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((infos, ask.len()))
}

/// A verified zstd file, found from an earlier refresh or made now.
enum Found {
    Reused(ZstFile),
    Made(ZstFile),
}

/// How the cache runs. [`CacheConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The server's state directory (`publish/` is read, `cache/` is written).
    pub state_dir: PathBuf,
    /// The fleet key: signs narinfos; its public half verifies releases.
    pub signing_key: SecretKey,
    /// Who may fetch what (default: every published path, to anyone).
    pub access: Access,
    /// NAR bodies sent at once; more requests wait for a place.
    pub max_nar_streams: usize,
    /// Shares of the NAR streams, connection caps and timeouts.
    pub limits: Limits,
    /// When set, `/metrics` needs `Authorization: Bearer <this>`.
    pub metrics_token: Option<String>,
    /// How often the publish tree is checked for new or changed releases.
    pub poll_interval: Duration,
    /// `Priority` in `/nix-cache-info` (lower is preferred; cache.nixos.org has 40).
    pub priority: u32,
    /// Hash every whole NAR body while sending it and hold its last chunk back until the
    /// hash matches (catches bit rot that leaves a file's identity unchanged, at ~35% of
    /// NAR throughput). Off by default: files are hashed when loaded, their identity is
    /// checked on every request, and Nix checks NarHash itself.
    pub verify_sends: bool,
}

impl CacheConfig {
    pub fn new(state_dir: impl Into<PathBuf>, signing_key: SecretKey) -> Self {
        CacheConfig {
            state_dir: state_dir.into(),
            signing_key,
            access: Access::Open,
            max_nar_streams: 64,
            limits: Limits::default(),
            metrics_token: None,
            poll_interval: Duration::from_secs(1),
            priority: 30,
            verify_sends: false,
        }
    }
}

/// Release file contents by host, as one refresh read them.
pub type ShownReleases = Arc<BTreeMap<String, Bytes>>;

/// What a refresh did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshReport {
    pub hosts: usize,
    pub skipped_hosts: usize,
    pub paths: usize,
    /// Store paths whose closures Nix was asked for; the others' were known from the
    /// index in place.
    pub asked: usize,
    pub signed: usize,
    pub compressed: usize,
    pub reused_files: usize,
    pub uncompressed: usize,
    pub removed: usize,
}

/// Shared by every handler and the refresher.
pub struct Cache {
    pub(super) config: CacheConfig,
    fleet_key: PublicKey,
    index: RwLock<Arc<Index>>,
    pub(super) metrics: Metrics,
    /// The registry `/metrics` renders: the process's, when [`Cache::expose`] was given
    /// one; else, made at the first scrape, one holding the cache's own metrics.
    exposition: OnceLock<Arc<Registry>>,
    pub(super) nar_places: StreamPlaces,
    refresh_lock: tokio::sync::Mutex<Fingerprint>,
    /// Store paths found altered under the server.
    pub(super) broken: Broken,
    /// Plain NARs sent whole and hashed right, with their paths' fingerprints then.
    pub(super) verified: Verified,
    /// File hashes of zstd files the serving path found changed or corrupt.
    suspects: Mutex<HashSet<[u8; 32]>>,
    wake: Notify,
    /// Counts finished refreshes; whoever announces releases (the SFTP watch) waits for it
    /// so that no host is told of a release before its closure is servable.
    refreshed: tokio::sync::watch::Sender<u64>,
    /// The release files of the hosts served, as read by the refresh whose index is in
    /// place: what hosts may be shown, since the closures of those that verified are
    /// servable now (see [`Cache::releases_shown`]).
    shown: tokio::sync::watch::Sender<ShownReleases>,
    pub(super) cache_info: Bytes,
    /// The hosts whose releases are served (the fleet file's hosts); `None` serves every
    /// release in the publish tree. A host removed from the fleet loses its closure here
    /// as it loses its SFTP login.
    served_hosts: Mutex<Option<BTreeSet<String>>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache with an empty index; call [`Cache::refresh`] (or run
    /// [`super::serve`], which does) to load the publish tree.
    pub fn new(config: CacheConfig) -> Result<Arc<Self>, CacheError> {
        if config.max_nar_streams == 0 {
            return Err(CacheError::Config(
                "max_nar_streams must be at least 1".into(),
            ));
        }
        config.limits.check().map_err(CacheError::Config)?;
        let cache_info = Bytes::from(format!(
            "StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n",
            store::STORE_DIR,
            config.priority
        ));
        Ok(Arc::new(Cache {
            fleet_key: config.signing_key.public(),
            index: RwLock::new(Arc::new(Index::default())),
            metrics: Metrics::default(),
            exposition: OnceLock::new(),
            nar_places: StreamPlaces::new(config.max_nar_streams, &config.limits),
            refresh_lock: tokio::sync::Mutex::new(Fingerprint::default()),
            broken: Broken::default(),
            verified: Verified::default(),
            suspects: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            refreshed: tokio::sync::watch::Sender::new(0),
            shown: tokio::sync::watch::Sender::new(ShownReleases::default()),
            cache_info,
            served_hosts: Mutex::new(None),
            config,
        }))
    }

    /// Serves only the releases of `hosts` from the next refresh on (the caller refreshes,
    /// or the watcher does when the publish tree changes).
    pub fn serve_only(&self, hosts: BTreeSet<String>) {
        let mut guard = match self.served_hosts.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Some(hosts);
    }

    fn served_hosts(&self) -> Option<BTreeSet<String>> {
        match self.served_hosts.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The public key clients must trust.
    pub fn public_key(&self) -> &PublicKey {
        &self.fleet_key
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Makes `/metrics` render `registry`, the process's one registry, in which the caller
    /// put the cache's metrics ([`Metrics::register`]) beside the other parts'. Call it
    /// before serving; a registry given after the first scrape is refused (returned).
    pub fn expose(&self, registry: Arc<Registry>) -> Result<(), Arc<Registry>> {
        self.exposition.set(registry)
    }

    /// The Prometheus text of `/metrics`. Collectors may read files (the fleet gauges do):
    /// call it on a blocking thread.
    pub(super) fn render_metrics(&self) -> String {
        let registry = self.exposition.get_or_init(|| {
            let mut own = Registry::default();
            self.metrics.register(&mut own);
            Arc::new(own)
        });
        let mut text = String::with_capacity(8192);
        if let Err(e) = prometheus_text::encode(&mut text, registry) {
            tracing::warn!(error = %e, "cannot render metrics");
        }
        text
    }

    pub(super) fn index(&self) -> Arc<Index> {
        match self.index.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn swap(&self, new: Index) {
        self.metrics.index(IndexFigures {
            paths: new.len(),
            hosts: new.hosts(),
            compressed: new.compressed(),
        });
        let new = Arc::new(new);
        match self.index.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    pub fn figures(&self) -> IndexFigures {
        let index = self.index();
        IndexFigures {
            paths: index.len(),
            hosts: index.hosts(),
            compressed: index.compressed(),
        }
    }

    /// Called by the serving path when a verified zstd file changed on disk or did not
    /// hash right: the refresher re-checks it, advertises the plain NAR meanwhile, and
    /// compresses it again.
    pub(super) fn suspect(&self, file_hash: [u8; 32]) {
        if let Ok(mut s) = self.suspects.lock() {
            s.insert(file_hash);
        }
        self.wake.notify_one();
    }

    /// Makes the watcher ([`Cache::watch`]) look at the publish tree now rather than at its
    /// next poll; it refreshes if the tree changed, as on any poll. Wakes while a refresh
    /// runs are kept: one more look follows it.
    pub fn wake_now(&self) {
        self.wake.notify_one();
    }

    fn token_dir(&self) -> Option<PathBuf> {
        matches!(self.config.access, Access::TokenDir)
            .then(|| self.config.state_dir.join(TOKENS_DIR))
    }

    /// Reloads the publish tree now and waits until every published path is servable with
    /// its zstd file (or, where that failed, with the plain NAR).
    pub async fn refresh(self: &Arc<Self>) -> Result<RefreshReport, CacheError> {
        let mut last = self.refresh_lock.lock().await;
        let me = self.clone();
        let result = tokio::task::spawn_blocking(move || me.refresh_blocking())
            .await
            .map_err(|e| CacheError::Task(e.to_string()))?;
        self.metrics.refreshed(result.is_ok());
        let (fingerprint, report) = result?;
        *last = fingerprint;
        self.refreshed.send_modify(|n| *n += 1);
        Ok(report)
    }

    /// Changes each time a refresh has finished: the publish tree as it then stood is served.
    pub fn refreshes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.refreshed.subscribe()
    }

    /// The release files the index in place was made from, updated once a refresh has made
    /// the closures of the verified ones servable in their final form (after their zstd
    /// files are made or found; plain where compressing failed). Showing hosts these, rather than the publish tree as it is now, means no host
    /// sees a release whose closure the cache does not serve yet. A release that did not
    /// verify is in it too: its host should see it (and refuse it) as before.
    pub fn releases_shown(&self) -> tokio::sync::watch::Receiver<ShownReleases> {
        self.shown.subscribe()
    }

    /// Polls the publish tree every `poll_interval` and refreshes when it changed or the
    /// serving path reported a bad file, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                    () = self.wake.notified() => {}
                }
            }
            let first_pass = std::mem::replace(&mut first, false);
            let me = self.clone();
            let changed = tokio::task::spawn_blocking(move || {
                scan::fingerprint(&me.config.state_dir, me.token_dir().as_deref())
            })
            .await
            .ok();
            let suspects = self.suspects.lock().map(|s| !s.is_empty()).unwrap_or(false);
            let stale = match &changed {
                Some(now) => *self.refresh_lock.lock().await != *now,
                None => true,
            };
            // The first pass always refreshes, also on an empty publish tree: the server
            // waits for the first view of it before it lets hosts in.
            if first_pass || stale || suspects {
                match self.refresh().await {
                    Ok(r) => tracing::info!(
                        hosts = r.hosts,
                        paths = r.paths,
                        asked = r.asked,
                        signed = r.signed,
                        compressed = r.compressed,
                        uncompressed = r.uncompressed,
                        "cache refreshed"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "cache refresh failed; still serving the previous index")
                    }
                }
            }
        }
    }

    fn refresh_blocking(&self) -> Result<(Fingerprint, RefreshReport), CacheError> {
        let started = Instant::now();
        let state_dir = &self.config.state_dir;
        let fingerprint = scan::fingerprint(state_dir, self.token_dir().as_deref());
        let scan::Releases {
            ok: mut published,
            skipped,
            mut files,
        } = scan::read_releases(state_dir, &self.fleet_key);
        for s in &skipped {
            tracing::warn!(host = %s.host, reason = %s.reason, "ignoring release");
        }
        if let Some(served) = self.served_hosts() {
            files.retain(|host, _| served.contains(host));
            published.retain(|p| {
                let keep = served.contains(&p.host);
                if !keep {
                    tracing::info!(host = %p.host, "not in the fleet file; its release is not served");
                }
                keep
            });
        }
        let previous = self.index();
        let mut asked = 0;
        let infos = loop {
            let tops: Vec<StorePath> = published.iter().map(|p| p.store_path.clone()).collect();
            if tops.is_empty() {
                break Vec::new();
            }
            match closure_known_or_asked(&tops, &previous) {
                Ok((infos, n)) => {
                    asked += n;
                    break infos;
                }
                Err(PathInfoError::NotValid(path)) => {
                    // A release whose system is not (or no longer) in the store: serve
                    // the others.
                    let before = published.len();
                    published.retain(|p| store::render(&p.store_path) != path);
                    for _ in published.len()..before {
                        tracing::error!(path = %path, "published store path is not in the store; its host is not served");
                    }
                    if published.len() == before {
                        return Err(CacheError::Closure(PathInfoError::NotValid(path)));
                    }
                }
                Err(e) => return Err(CacheError::Closure(e)),
            }
        };
        let host_ids: HashMap<String, u32> = published
            .iter()
            .enumerate()
            .map(|(i, p)| (p.host.clone(), i as u32))
            .collect();
        let tokens = match &self.config.access {
            Access::Open => None,
            Access::Tokens(t) => Some(t.clone()),
            Access::TokenDir => {
                let hosts: Vec<String> = published.iter().map(|p| p.host.clone()).collect();
                Some(access::load_or_create(state_dir, &hosts)?)
            }
        };
        let members = if tokens.is_some() {
            let tops: Vec<(u32, StorePath)> = published
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u32, p.store_path.clone()))
                .collect();
            index::membership(&infos, &tops)
        } else {
            HashMap::new()
        };
        let suspects: HashSet<[u8; 32]> = self
            .suspects
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        let keep_zst = |z: &ZstFile| {
            !suspects.contains(&z.file_hash.0) && FileIdentity::at(&z.path) == Some(z.identity)
        };
        let mut report = RefreshReport {
            hosts: published.len(),
            skipped_hosts: skipped.len(),
            paths: infos.len(),
            asked,
            ..RefreshReport::default()
        };
        let built = index::build_entries(
            infos,
            &previous,
            &members,
            &self.config.signing_key,
            keep_zst,
        );
        let mut entries = Vec::with_capacity(built.len());
        for e in built {
            entries.push(e?);
        }
        report.signed = entries
            .iter()
            .filter(|e| {
                previous
                    .get(&e.hash_part)
                    .is_none_or(|old| old.info != e.info)
            })
            .count();
        // Phase 1: servable now, plain NARs where no verified file is known yet.
        self.swap(Index::new(
            entries.clone(),
            host_ids.clone(),
            tokens.clone(),
        ));
        drop(previous);
        let releases = Arc::new(files);

        // Phase 2: one zstd file per distinct NAR hash that lacks a verified one.
        let mut todo: HashMap<Sha256Hash, &ServablePath> = HashMap::new();
        for e in entries.iter().filter(|e| e.zst.is_none()) {
            todo.entry(e.info.nar_hash).or_insert(e);
        }
        let results: Vec<(Sha256Hash, Result<Found, compress::CompressError>)> = todo
            .into_par_iter()
            .map(|(nar_hash, e)| (nar_hash, self.find_or_compress(e)))
            .collect();
        let mut files: HashMap<Sha256Hash, ZstFile> = HashMap::new();
        for (nar_hash, r) in results {
            match r {
                Ok(Found::Reused(file)) => {
                    report.reused_files += 1;
                    files.insert(nar_hash, file);
                }
                Ok(Found::Made(file)) => {
                    report.compressed += 1;
                    self.broken.clear(&nar_hash, &self.metrics);
                    files.insert(nar_hash, file);
                }
                Err(compress::CompressError::StoreMismatch { path, found, .. }) => {
                    let why = format!("its NAR hashes to {found}, not to the hash registered");
                    self.broken.mark(nar_hash, &path, &why, &self.metrics);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot compress NAR; serving it uncompressed");
                }
            }
        }
        let key = &self.config.signing_key;
        let entries: Vec<Arc<ServablePath>> = entries
            .into_par_iter()
            .map(|e| match (e.zst.is_none(), files.get(&e.info.nar_hash)) {
                (true, Some(file)) => match index::render_zst(&e.info, file, key) {
                    Ok(bytes) => Arc::new(ServablePath {
                        info: e.info.clone(),
                        hash_part: e.hash_part,
                        narinfo_plain: e.narinfo_plain.clone(),
                        zst: Some(Compressed {
                            file: file.clone(),
                            narinfo: bytes,
                        }),
                        hosts: e.hosts.clone(),
                    }),
                    Err(err) => {
                        tracing::error!(error = %err, "cannot render zstd narinfo");
                        e
                    }
                },
                _ => e,
            })
            .collect();
        report.uncompressed = entries.iter().filter(|e| e.zst.is_none()).count();
        let keep: HashMap<Sha256Hash, Sha256Hash> = entries
            .iter()
            .filter_map(|e| e.zst.as_ref().map(|c| (e.info.nar_hash, c.file.file_hash)))
            .collect();
        let served: HashSet<Sha256Hash> = entries.iter().map(|e| e.info.nar_hash).collect();
        self.broken.retain(|h| served.contains(h), &self.metrics);
        self.broken.recheck(&self.metrics);
        self.swap(Index::new(entries, host_ids, tokens));
        // Hosts are shown their releases only now, with every entry in its final form: an
        // agent lists its closure (file sizes) and then asks for the NARs; had it listed
        // between the two swaps, the NARs would come in another form than listed and the
        // agent would refuse the stream (copy-failed, retried seconds later).
        self.shown.send_replace(releases);
        // Files of paths that left every closure, and of crashed compressions, go; but
        // never while an entry still lacks its file (it may be mid-repair).
        if report.uncompressed == 0 {
            report.removed = compress::collect_garbage(state_dir, &keep);
        }
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "refresh done"
        );
        Ok((fingerprint, report))
    }

    /// A verified zstd file for the NAR of `e`: the one recorded from earlier if it still
    /// hashes right, else a fresh compression.
    fn find_or_compress(&self, e: &ServablePath) -> Result<Found, compress::CompressError> {
        let dir = &self.config.state_dir;
        match compress::load_verified(dir, &e.info.nar_hash) {
            Ok(Some(file)) => return Ok(Found::Reused(file)),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(path = %store::render(&e.info.path), error = %err, "compressed NAR is corrupt; compressing again");
                let file = match &err {
                    compress::CompressError::Corrupt { path, .. } => Some(path.as_path()),
                    _ => None,
                };
                compress::remove(dir, &e.info.nar_hash, file);
            }
        }
        compress::compress(dir, &e.info).map(Found::Made)
    }
}
