//! The agent's plugins: deploying what the server assigns (fetch, verify, load, route) and
//! the local policy that decides what each plugin is granted.

use crate::host::LoadOptions;

pub(crate) mod deploy;
pub mod policy;

use policy::Grant;

/// What the host loads a plugin with, from what the policy granted it.
pub(crate) fn load_options(grant: Grant) -> LoadOptions {
    LoadOptions {
        fuel: grant.limits.fuel,
        capabilities: grant.capabilities,
        max_memory_bytes: grant
            .limits
            .memory_mib
            .map(|mib| (mib as usize).saturating_mul(1024 * 1024)),
        timeout: grant.limits.timeout,
        read_only: Vec::new(),
    }
}
