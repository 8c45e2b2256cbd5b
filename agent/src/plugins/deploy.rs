//! Pushed plugins on the agent: fetch, verify, keep, load and route them as the server assigns.
//!
//! The server sends the complete set of plugins assigned to this agent (`PluginAssign`) after
//! each Welcome and whenever it changes. One long-lived task carries out the newest set:
//! - plugins no longer assigned stop being routed (their running commands finish);
//! - each new or changed plugin is taken from the package store, or fetched over its own stream,
//!   and its digest and signature are checked against the server key this agent pinned
//!   *before* a byte is written or decoded; a package that fails is refused, never stored, and
//!   reported;
//! - its manifest is granted against the local policy, the component is compiled (once: the
//!   compiled cache keeps restarts fast) and its topics are routed to it;
//! - after every step a `PluginReport` tells the server where each plugin stands.
//!
//! The package store is `<data_dir>/packages/<digest>.pkg`, content-addressed; packages are
//! checked again whenever they are read, so a file changed on this disk is refused too. The
//! last set is kept (`assigned.cbor`), so a restarted agent serves its pushed plugins before
//! it has reached the server again.
//!
//! The pinned key is `plugin_key`, by default `plugin-signing.pub` beside the CA file. Compiling
//! happens off the async workers. Packages nothing refers to any more are deleted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_manifest::Manifest;
use ferry_protocol::package::{self, Digest, PublicKey};
use ferry_protocol::{
    AssignedPlugin, Fetch, FetchReply, FrameReader, Message, PackageChunk, Peer, PluginAssign,
    PluginReport, StreamKind, write_frame,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::commands::routes::Routes;
use crate::host::{LoadedPlugin, PluginHost};
use crate::plugins::load_options;
use crate::plugins::policy::Policy;

/// How long the server may take to answer a fetch, and then to send each chunk.
const FETCH_STALL: Duration = Duration::from_secs(30);
const ASSIGNED_FILE: &str = "assigned.cbor";

/// The connection a plugin set arrived on: where to fetch from and report to.
#[derive(Clone)]
pub(crate) struct Session {
    pub(crate) connection: quinn::Connection,
    pub(crate) reports: mpsc::UnboundedSender<Message>,
}

struct Desired {
    plugins: Vec<AssignedPlugin>,
    session: Option<Session>,
}

/// Carries out the server's plugin assignments.
pub(crate) struct Deployer {
    routes: Arc<Routes>,
    /// Loading a new version of a quarantined plugin lifts its quarantine. Weak: the journal
    /// closes its file when the agent stops, whatever the deployer's tasks still hold.
    journal: std::sync::Weak<crate::commands::journal::Journal>,
    host: PluginHost,
    policy: Arc<Policy>,
    /// The pinned server key, or why there is none.
    key: Result<PublicKey, String>,
    dir: PathBuf,
    max_frame: u32,
    max_package: u64,
    desired: watch::Sender<Option<Arc<Desired>>>,
}

impl Deployer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        routes: Arc<Routes>,
        journal: std::sync::Weak<crate::commands::journal::Journal>,
        host: PluginHost,
        policy: Arc<Policy>,
        key: Result<PublicKey, String>,
        dir: PathBuf,
        max_frame: u32,
        max_package: u64,
    ) -> Deployer {
        Deployer {
            routes,
            journal,
            host,
            policy,
            key,
            dir,
            max_frame,
            max_package,
            desired: watch::Sender::new(None),
        }
    }

    /// Serves the set assigned before the agent stopped, from the packages it already has.
    /// Plugins whose package is missing stay pending until the server assigns them again.
    pub(crate) async fn restore(&self) {
        let Ok(bytes) = std::fs::read(self.dir.join(ASSIGNED_FILE)) else {
            return;
        };
        let plugins = match ferry_protocol::codec::decode(&bytes) {
            Ok(Message::PluginAssign(assign)) => assign.plugins,
            _ => {
                tracing::warn!(
                    "the saved plugin assignment is damaged; waiting for the server's instead"
                );
                return;
            }
        };
        for plugin in self.routes.assign(&plugins) {
            if !self.package_path(&plugin.digest).exists() {
                continue;
            }
            match self.load(&plugin, None).await {
                Ok(loaded) => self.routes.ready(&plugin, loaded),
                Err(why) => self.routes.failed(&plugin, why),
            }
        }
    }

    /// Takes a new plugin set from the server.
    pub(crate) fn assign(&self, plugins: Vec<AssignedPlugin>, session: Session) {
        self.desired.send_replace(Some(Arc::new(Desired {
            plugins,
            session: Some(session),
        })));
    }

    /// Digests of the packages in the store, for Hello.
    pub(crate) fn stored(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut digests: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let digest = name.strip_suffix(".pkg")?;
                digest.parse::<Digest>().ok().map(|d| d.to_string())
            })
            .collect();
        digests.sort();
        digests
    }

    /// Runs until `stop`: carries out each new set, the newest first.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut desired = self.desired.subscribe();
        loop {
            tokio::select! {
                changed = desired.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
            let Some(set) = desired.borrow_and_update().clone() else {
                continue;
            };
            tokio::select! {
                _ = self.reconcile(&set, &desired) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn reconcile(&self, set: &Desired, newer: &watch::Receiver<Option<Arc<Desired>>>) {
        self.save(&set.plugins);
        let todo = self.routes.assign(&set.plugins);
        self.report(set.session.as_ref());
        for plugin in todo {
            if newer.has_changed().unwrap_or(false) {
                // A newer set arrived: carry that one out instead.
                return;
            }
            match self.load(&plugin, set.session.as_ref()).await {
                Ok(loaded) => {
                    tracing::info!(plugin = %plugin.name, version = %plugin.version, digest = %plugin.digest, from_cache = loaded.from_cache(), "pushed plugin ready");
                    if let Some(journal) = self.journal.upgrade() {
                        if journal.quarantined(&plugin.name).is_some() {
                            tracing::info!(plugin = %plugin.name, version = %plugin.version, "a new version lifts the plugin's quarantine");
                        }
                        if let Err(e) = journal.release(&plugin.name).await {
                            tracing::warn!(plugin = %plugin.name, error = %e, "cannot record that the quarantine is lifted");
                        }
                    }
                    self.routes.ready(&plugin, loaded);
                }
                Err(why) => {
                    tracing::warn!(plugin = %plugin.name, version = %plugin.version, "pushed plugin refused: {why}");
                    self.routes.failed(&plugin, why);
                }
            }
            self.report(set.session.as_ref());
        }
        self.prune();
    }

    fn report(&self, session: Option<&Session>) {
        if let Some(session) = session {
            let report = PluginReport {
                plugins: self.routes.statuses(),
                topics: self.routes.topics(),
                read_only: self.routes.read_only_topics(),
            };
            // A closed channel means the session ended; the next one gets a fresh report.
            let _ = session.reports.send(Message::PluginReport(report));
        }
    }

    fn package_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{digest}.pkg"))
    }

    /// The verified package of `plugin`, loaded into the plugin host.
    async fn load(
        &self,
        plugin: &AssignedPlugin,
        session: Option<&Session>,
    ) -> Result<LoadedPlugin, String> {
        let key = self.key.clone()?;
        let path = self.package_path(&plugin.digest);
        let stored = match tokio::fs::read(&path).await {
            Ok(bytes) => match package::verify(&bytes, &plugin.digest, &plugin.signature, &key) {
                Ok(package) => Some(package),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "a stored package failed its check and is deleted: {e}");
                    let _ = std::fs::remove_file(&path);
                    None
                }
            },
            Err(_) => None,
        };
        let package = match stored {
            Some(package) => package,
            None => {
                let session = session.ok_or_else(|| {
                    "its package is not on this agent; it is fetched when the server is reachable"
                        .to_string()
                })?;
                let bytes = self.fetch(plugin, &session.connection).await?;
                let package = package::verify(&bytes, &plugin.digest, &plugin.signature, &key)
                    .map_err(|e| format!("refused: {e}"))?;
                write_private(&self.dir, &path, &bytes).map_err(|e| {
                    format!("cannot store its package in {}: {e}", self.dir.display())
                })?;
                package
            }
        };
        let manifest = Manifest::from_toml(&package.manifest)
            .map_err(|e| format!("its manifest is not valid: {e}"))?;
        if manifest.plugin.name != plugin.name {
            return Err(format!(
                "its manifest names it '{}', but it was assigned as '{}'",
                manifest.plugin.name, plugin.name
            ));
        }
        let grant = self.policy.grant(&manifest);
        for refusal in &grant.refusals {
            tracing::warn!(plugin = %plugin.name, "capability refused: {}", refusal.message);
        }
        let options = crate::host::LoadOptions {
            read_only: manifest.plugin.read_only.clone(),
            ..load_options(grant)
        };
        let host = self.host.clone();
        let name = plugin.name.clone();
        // Compiling a large component takes seconds of CPU: not on an async worker. Its logs go
        // where this task's go.
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        tokio::task::spawn_blocking(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                host.load_with(&name, &package.component, options)
            })
        })
        .await
        .map_err(|e| format!("loading it failed: {e}"))?
        .map_err(|e| e.to_string())
    }

    /// Fetches a package over its own stream; the bytes are not trusted yet.
    async fn fetch(
        &self,
        plugin: &AssignedPlugin,
        connection: &quinn::Connection,
    ) -> Result<Vec<u8>, String> {
        if plugin.size > self.max_package {
            return Err(format!(
                "its package has {} bytes, more than this agent fetches (max_plugin_bytes = {})",
                plugin.size, self.max_package
            ));
        }
        let failed = |e: &dyn std::fmt::Display| format!("fetching its package failed: {e}");
        let (mut send, recv) = connection.open_bi().await.map_err(|e| failed(&e))?;
        let request = Message::Fetch(Fetch {
            digest: plugin.digest,
        });
        write_frame(&mut send, &request, self.max_frame)
            .await
            .map_err(|e| failed(&e))?;
        let _ = send.finish();
        let mut recv = FrameReader::new(recv, self.max_frame);
        let mut next = async || match tokio::time::timeout(FETCH_STALL, recv.next()).await {
            Ok(Ok(Some(message))) => {
                message
                    .check_allowed(Peer::Server, StreamKind::Fetch)
                    .map_err(|e| failed(&e))?;
                Ok(Some(message))
            }
            Ok(Ok(None)) => Ok(None),
            Ok(Err(e)) => Err(failed(&e)),
            Err(_) => Err(failed(&format!(
                "the server sent nothing for {FETCH_STALL:?}"
            ))),
        };
        let size = match next().await? {
            Some(Message::FetchReply(FetchReply {
                size: Some(size), ..
            })) => size,
            Some(Message::FetchReply(FetchReply { error, .. })) => {
                return Err(failed(
                    &error.unwrap_or_else(|| "the server gave no reason".into()),
                ));
            }
            _ => return Err(failed(&"the server did not answer with FetchReply")),
        };
        if size != plugin.size {
            return Err(failed(&format!(
                "the server announced {size} bytes, but the package was assigned with {}",
                plugin.size
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        loop {
            match next().await? {
                Some(Message::PackageChunk(PackageChunk { bytes: chunk })) => {
                    if bytes.len() as u64 + chunk.len() as u64 > size {
                        return Err(failed(&format!("the server sent more than {size} bytes")));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                None => break,
                Some(other) => {
                    return Err(failed(&format!("unexpected {} mid-package", other.kind())));
                }
            }
        }
        if bytes.len() as u64 != size {
            return Err(failed(&format!(
                "the stream ended after {} of {size} bytes",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    fn save(&self, plugins: &[AssignedPlugin]) {
        let message = Message::PluginAssign(PluginAssign {
            plugins: plugins.to_vec(),
        });
        let saved = ferry_protocol::codec::encode(&message)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                write_private(&self.dir, &self.dir.join(ASSIGNED_FILE), &bytes)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = saved {
            tracing::warn!(
                "cannot save the plugin assignment (a restart will wait for the server's): {e}"
            );
        }
    }

    /// Deletes packages nothing refers to any more, so the store does not grow without bound.
    fn prune(&self) {
        let keep = self.routes.digests();
        for digest in self.stored() {
            if let Ok(digest) = digest.parse::<Digest>()
                && !keep.contains(&digest)
            {
                let _ = std::fs::remove_file(self.package_path(&digest));
            }
        }
    }
}

/// Writes through a temporary file and a rename, in a directory only the agent's user reads.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    ferry_protocol::pki::write_file(path, bytes, true).map_err(std::io::Error::other)
}
