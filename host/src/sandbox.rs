//! Each invocation's WASI context, built from the plugin's grant: the directories it may see
//! (preopened at their own paths, read-only or read-write), the environment variables it may
//! read, and the network destinations it may reach. Everything else stays denied, as the empty
//! grant leaves it.
//!
//! Escapes are wasmtime-wasi's to refuse: preopened directories are capability handles
//! (cap-std), so `..` and symlinks cannot lead out of them.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use ferry_manifest::{Access, Capabilities, NetRule};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use super::output::Captured;
use super::{CommandEvents, LogLevel};

/// A loaded plugin's grant, prepared once at load.
#[derive(Debug, Default)]
pub(crate) struct Sandbox {
    capabilities: Capabilities,
    /// The granted variables' values, read from the agent's environment at load.
    env: Vec<(String, String)>,
    network: Arc<[NetRule]>,
}

impl Sandbox {
    pub(crate) fn new(capabilities: Capabilities) -> Self {
        let env = capabilities
            .env
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|value| (name.clone(), value)))
            .collect();
        let network = capabilities.network.clone().into();
        Sandbox {
            capabilities,
            env,
            network,
        }
    }

    /// The granted environment variables and their values (read at load).
    pub(crate) fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The WASI context of one invocation.
    pub(crate) fn wasi_ctx(
        &self,
        plugin: &str,
        events: &Arc<dyn CommandEvents>,
        stdout: Captured,
        stderr: Captured,
    ) -> WasiCtx {
        let mut builder = WasiCtxBuilder::new();
        builder.stdout(stdout).stderr(stderr);
        for (name, value) in &self.env {
            builder.env(name, value);
        }
        for entry in &self.capabilities.filesystem {
            let perms = match entry.access {
                Access::ReadOnly => FsPerms::ReadOnly,
                Access::ReadWrite => FsPerms::ReadWrite,
            };
            let guest = entry.path.to_string_lossy();
            if let Err(e) = builder.preopened_dir(&entry.path, guest.as_ref(), perms) {
                events.log(
                    LogLevel::Warn,
                    format!(
                        "the granted directory {} cannot be opened on this host ({e}); the plugin runs without it",
                        entry.path.display()
                    ),
                );
            }
        }
        let reach = !self.network.is_empty();
        builder
            .allow_tcp(reach)
            .allow_udp(reach)
            .allow_ip_name_lookup(reach);
        if reach {
            let rules = self.network.clone();
            let events = events.clone();
            let plugin = plugin.to_string();
            builder.socket_addr_check(move |addr, use_| {
                let rules = rules.clone();
                let events = events.clone();
                let plugin = plugin.clone();
                Box::pin(async move {
                    let allowed = match use_ {
                        // Connecting binds implicitly to the wildcard address and an ephemeral
                        // port; any other bind would be a listener, which no grant allows.
                        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                            addr.ip().is_unspecified() && addr.port() == 0
                        }
                        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
                        SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
                            covered(&rules, addr).await
                        }
                    };
                    if !allowed {
                        events.log(
                            LogLevel::Warn,
                            format!(
                                "network: {use_:?} {addr} refused: plugin '{plugin}' has no network grant for it; \
                                 its manifest must ask for it and the agent's policy allow it (`network` under [capabilities])"
                            ),
                        );
                    }
                    allowed
                })
            });
        }
        builder.build()
    }
}

/// Is `addr` covered by a rule? IP rules compare directly; a DNS name is resolved when a
/// connection is attempted, so a grant follows the name's current addresses.
async fn covered(rules: &[NetRule], addr: SocketAddr) -> bool {
    let mut names = Vec::new();
    for rule in rules {
        if rule.port.is_some_and(|p| p != addr.port()) {
            continue;
        }
        match rule.host.parse::<std::net::IpAddr>() {
            Ok(ip) if ip == addr.ip() => return true,
            Ok(_) => {}
            Err(_) => names.push(rule.host.clone()),
        }
    }
    if names.is_empty() {
        return false;
    }
    let port = addr.port();
    let resolved = tokio::task::spawn_blocking(move || {
        names
            .iter()
            .filter_map(|name| (name.as_str(), port).to_socket_addrs().ok())
            .flatten()
            .collect::<Vec<SocketAddr>>()
    })
    .await
    .unwrap_or_default();
    resolved.iter().any(|r| r.ip() == addr.ip())
}
