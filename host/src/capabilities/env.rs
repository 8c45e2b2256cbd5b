//! The `env` capability, served by WASI: the granted variables of the agent's environment,
//! with their values read once, when the plugin loads. The programs it starts (`process`) get
//! the same variables.

use wasmtime_wasi::WasiCtxBuilder;

/// A loaded plugin's granted environment.
#[derive(Debug)]
pub(crate) struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    /// Reads the granted variables that are set; one that is not set is left out.
    pub(crate) fn new(names: &[String]) -> Self {
        let vars = names
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|value| (name.clone(), value)))
            .collect();
        Env { vars }
    }

    /// The granted variables and their values.
    pub(crate) fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    pub(crate) fn configure(&self, builder: &mut WasiCtxBuilder) {
        for (name, value) in &self.vars {
            builder.env(name, value);
        }
    }
}
