//! The `network` capability, served by WASI sockets: outbound TCP and UDP to the granted
//! destinations only (IP rules directly, DNS-name rules resolved when a connection is
//! attempted), the implicit ephemeral bind of a connect, and no listening. Every refusal is
//! logged to the command with the address.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use ferry_manifest::{CapabilityId, NetRule};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::sockets::SocketAddrUse;

use super::Grantee;
use crate::{CommandEvents, LogLevel};

/// A loaded plugin's granted destinations.
#[derive(Debug)]
pub(crate) struct Network {
    grantee: Arc<Grantee>,
    rules: Arc<[NetRule]>,
}

impl Network {
    pub(crate) fn new(grantee: &Arc<Grantee>, rules: &[NetRule]) -> Self {
        Network {
            grantee: grantee.clone(),
            rules: rules.to_vec().into(),
        }
    }

    /// Allows sockets only with a grant, and then only to what it covers.
    pub(crate) fn configure(&self, builder: &mut WasiCtxBuilder, events: &Arc<dyn CommandEvents>) {
        let reach = !self.rules.is_empty();
        builder
            .allow_tcp(reach)
            .allow_udp(reach)
            .allow_ip_name_lookup(reach);
        if reach {
            let rules = self.rules.clone();
            let events = events.clone();
            let grantee = self.grantee.clone();
            builder.socket_addr_check(move |addr, use_| {
                let rules = rules.clone();
                let events = events.clone();
                let grantee = grantee.clone();
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
                                "network: {use_:?} {addr} refused: plugin '{}' has no {key} grant for it; \
                                 its manifest must ask for it and the agent's policy allow it (`{key}` under [capabilities])",
                                grantee.plugin,
                                key = CapabilityId::Network.key(),
                            ),
                        );
                    }
                    allowed
                })
            });
        }
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
