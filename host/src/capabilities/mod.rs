//! The capabilities, one module each (Spin's *factors* are the model), one per entry of
//! `ferry_manifest::CAPABILITIES`. A module holds what a loaded plugin's grant of its
//! capability carries (its state: the grant, and the source whoever runs the host supplied),
//! its grant check, whose refusal says how to grant it, and its hook: `add_to_linker` for a
//! `ferry:plugin` interface (every served WIT version's), or `configure` for the WASI context
//! of each invocation.
//!
//! - WASI's, served by wasmtime-wasi from the grant: `filesystem`, `env`, `network`;
//! - ferry's, for what WASI lacks: `process` (`programs`), `metrics`, `kv`, `request_data`
//!   (a function of `context`, which every plugin gets), `runtimes`, `decommission` (the
//!   `agent` interface).
//!
//! The operations are in the host's own types; each version's bindings (`bindings/`) adapt
//! its WIT types to them.
//!
//! `Granted` is all the parts for one loaded plugin, built at load and shared by its invocations;
//! an empty grant is the deny-all sandbox. A switch's refusal (`Switch::check`) is built from the
//! table: "`<key>` is not granted to plugin '…'", and how to grant it where the grants come from
//! (`GrantSource`): in a manifest and an agent's policy (`kv = true` under `[capabilities]` and
//! under `[plugins.NAME.capabilities]`), or with `ferry plugin test --grant kv`, whose plugin is
//! named after its file without `.wasm`, as a policy would name it. A unit test checks that every
//! switch of the table has a part that refuses it.

use std::sync::Arc;

use ferry_manifest::{CAPABILITIES, Capabilities, CapabilityId, Gate};
use wasmtime::component::Linker;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use super::output::Captured;
use super::state::State;
use super::{CommandEvents, GrantSource, HostConfig};

pub(crate) mod decommission;
pub(crate) mod env;
pub(crate) mod filesystem;
pub mod kv;
pub mod metrics;
pub(crate) mod network;
pub(crate) mod process;
pub(crate) mod request_data;
pub mod runtimes;

/// What one loaded plugin may reach outside its sandbox, capability by capability; built once
/// at load from its grant ([`LoadOptions::capabilities`](super::LoadOptions)) and shared by
/// its invocations. An empty grant is the deny-all sandbox.
pub(crate) struct Granted {
    pub(crate) filesystem: filesystem::Filesystem,
    pub(crate) env: env::Env,
    pub(crate) network: network::Network,
    pub(crate) programs: process::Programs,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) kv: kv::Kv,
    pub(crate) request_data: request_data::RequestData,
    pub(crate) runtimes: runtimes::Runtimes,
    pub(crate) decommission: decommission::Decommission,
}

impl Granted {
    pub(crate) fn new(plugin: &str, capabilities: &Capabilities, config: &HostConfig) -> Self {
        let grantee = Arc::new(Grantee {
            plugin: plugin.to_string(),
            grants: config.grants,
        });
        // Destructured so that a new capability does not compile until it has a part here.
        let Capabilities {
            filesystem,
            env,
            network,
            programs,
            metrics: _,
            kv: _,
            request_data: _,
            runtimes: _,
            decommission: _,
        } = capabilities;
        let switch = |id| Switch::new(id, capabilities, &grantee);
        let filesystem = filesystem::Filesystem::new(filesystem);
        let env = env::Env::new(env);
        Granted {
            programs: process::Programs::new(&grantee, programs, env.vars(), filesystem.dirs()),
            network: network::Network::new(&grantee, network),
            metrics: metrics::Metrics::new(switch(CapabilityId::Metrics), config.metrics.clone()),
            kv: kv::Kv::new(switch(CapabilityId::Kv), &grantee, config.kv.clone()),
            request_data: request_data::RequestData::new(switch(CapabilityId::RequestData)),
            runtimes: runtimes::Runtimes::new(
                switch(CapabilityId::Runtimes),
                config.runtimes.clone(),
            ),
            decommission: decommission::Decommission::new(switch(CapabilityId::Decommission)),
            filesystem,
            env,
        }
    }

    /// The WASI context of one invocation: stdout and stderr captured, and what the WASI
    /// capabilities grant; everything else denied.
    pub(crate) fn wasi_ctx(
        &self,
        events: &Arc<dyn CommandEvents>,
        stdout: Captured,
        stderr: Captured,
    ) -> WasiCtx {
        let mut builder = WasiCtxBuilder::new();
        builder.stdout(stdout).stderr(stderr);
        self.filesystem.configure(&mut builder, events);
        self.env.configure(&mut builder);
        self.network.configure(&mut builder, events);
        builder.build()
    }
}

/// Adds the `ferry:plugin` interfaces the capabilities answer, every served version's, to
/// `linker`. Every plugin is linked with all of them: a call without the grant is refused
/// when made, so that a plugin can do without what it was not granted.
pub(crate) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    process::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    kv::add_to_linker(linker)?;
    runtimes::add_to_linker(linker)?;
    decommission::add_to_linker(linker)?;
    Ok(())
}

/// The `ferry:plugin` interfaces a plugin may import, for messages: `context` and those of the
/// capability table.
pub(crate) fn interfaces() -> String {
    let mut names = vec!["context"];
    for capability in CAPABILITIES {
        if let Gate::Ferry(name) = capability.gate {
            let interface = name.split('.').next().unwrap_or(name);
            if !names.contains(&interface) {
                names.push(interface);
            }
        }
    }
    names.join(", ")
}

/// The plugin a grant belongs to and where its grants come from: what a refusal names.
#[derive(Debug)]
pub(crate) struct Grantee {
    pub(crate) plugin: String,
    pub(crate) grants: GrantSource,
}

impl Grantee {
    /// How to grant `setting` (as a manifest and a policy write it) to this plugin; `flag`
    /// is the `--grant` value that does it on the command line.
    pub(crate) fn how(&self, setting: &str, flag: &str) -> String {
        self.grants.how(&self.plugin, setting, flag)
    }
}

/// An on/off capability's grant.
pub(crate) struct Switch {
    id: CapabilityId,
    on: bool,
    grantee: Arc<Grantee>,
}

impl Switch {
    fn new(id: CapabilityId, capabilities: &Capabilities, grantee: &Arc<Grantee>) -> Self {
        Switch {
            id,
            on: capabilities.switch(id).unwrap_or(false),
            grantee: grantee.clone(),
        }
    }

    /// Fails unless granted, saying how to grant it.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.on {
            return Ok(());
        }
        let capability = self.id.capability();
        let key = capability.key;
        let how = self.grantee.how(&format!("{key} = true"), capability.flag);
        Err(format!(
            "{key} is not granted to plugin '{}': {how}",
            self.grantee.plugin
        ))
    }
}

#[cfg(test)]
mod tests {
    use ferry_manifest::{CAPABILITIES, Capabilities, Kind};

    use super::{Granted, Switch};
    use crate::{GrantSource, HostConfig};

    impl Granted {
        /// The grant of switch `id`, from its part.
        fn switch(&self, id: ferry_manifest::CapabilityId) -> Option<&Switch> {
            use ferry_manifest::CapabilityId as C;
            match id {
                C::Metrics => Some(&self.metrics.granted),
                C::Kv => Some(&self.kv.granted),
                C::RequestData => Some(&self.request_data.granted),
                C::Runtimes => Some(&self.runtimes.granted),
                C::Decommission => Some(&self.decommission.granted),
                C::Filesystem | C::Env | C::Network | C::Programs => None,
            }
        }
    }

    #[test]
    fn every_switch_of_the_table_has_a_part_that_refuses_it_unless_granted() {
        let config = HostConfig {
            grants: GrantSource::CommandLine,
            ..HostConfig::default()
        };
        let none = Granted::new("p", &Capabilities::default(), &config);
        for capability in CAPABILITIES {
            let switch = none.switch(capability.id);
            assert_eq!(
                switch.is_some(),
                capability.kind == Kind::Switch,
                "{}",
                capability.key
            );
            let Some(switch) = switch else { continue };
            let refused = switch.check().unwrap_err();
            let expected = format!(
                "{} is not granted to plugin 'p': run it with `--grant {}`",
                capability.key, capability.flag
            );
            assert!(refused.starts_with(&expected), "{refused}");

            let mut asked = Capabilities::default();
            *asked.switch_mut(capability.id).unwrap() = true;
            let granted = Granted::new("p", &asked, &config);
            assert_eq!(granted.switch(capability.id).unwrap().check(), Ok(()));
        }
    }

    #[test]
    fn the_interfaces_named_in_messages_are_the_tables() {
        assert_eq!(
            super::interfaces(),
            "context, process, metrics, kv, runtimes, agent"
        );
    }
}
