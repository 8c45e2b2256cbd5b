//! ferry's built-in plugins, as wasm component bytes ready for the agent's plugin host.
//!
//! The components are built from the `plugins/` workspace by this crate's build script (for
//! `wasm32-wasip2`, in release mode) and embedded with `include_bytes!`, so an agent binary
//! carries its built-in plugins and needs no files next to it.
//!
//! [`all`] lists the plugins an agent serves by default. [`fixtures`] holds plugins that exist
//! only for tests.

/// One embedded plugin.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// The plugin's name, as the agent reports it and uses in its logs.
    pub name: &'static str,
    /// The topics the plugin handles.
    pub topics: &'static [&'static str],
    /// Those of them that change nothing on the host, and so run without the journals (as a
    /// manifest's `read_only` says for a pushed plugin).
    pub read_only: &'static [&'static str],
    /// The wasm component, for the world `ferry:plugin/plugin@0.1.0`.
    pub component: &'static [u8],
}

/// `echo`: returns its payload unchanged, after logging its size and reporting progress; a
/// payload declared as JSON (`application/json` or `…+json`) must be valid JSON, or the
/// command fails with `invalid-input`.
pub const ECHO: Builtin = Builtin {
    name: "echo",
    topics: &["echo"],
    read_only: &["echo"],
    component: include_bytes!(env!("FERRY_BUILTIN_ECHO")),
};

/// `runtimes`: the runtime topics of an edge orchestrator agent (`create_new_runtime`,
/// `start_device`, `stop_device`, `restart_device`, `delete_device`, `get_consumption_device`)
/// on the `runtimes` interface; JSON payloads checked against each topic's contract (see
/// `plugins/runtimes/src/lib.rs`). It can do only what the agent's policy grants the plugin
/// named `runtimes`: `runtimes = true` and the programs runtimes may run.
pub const RUNTIMES: Builtin = Builtin {
    name: "runtimes",
    topics: &[
        "create_new_runtime",
        "start_device",
        "stop_device",
        "restart_device",
        "delete_device",
        "get_consumption_device",
    ],
    read_only: &["get_consumption_device"],
    component: include_bytes!(env!("FERRY_BUILTIN_RUNTIMES")),
};

/// `orchestrator`: the agent's own consumption (`get_consumption_orchestrator`) from the
/// `metrics` history, and `delete_orchestrator`, which removes the agent for good; they need
/// `metrics = true` and `decommission = true` for the plugin named `orchestrator` in the
/// agent's policy.
pub const ORCHESTRATOR: Builtin = Builtin {
    name: "orchestrator",
    topics: &["get_consumption_orchestrator", "delete_orchestrator"],
    read_only: &["get_consumption_orchestrator"],
    component: include_bytes!(env!("FERRY_BUILTIN_ORCHESTRATOR")),
};

/// `run-command`: `run_command` runs an allowed program (arguments, environment, working
/// directory, stdin, timeout) and answers with its exit code and bounded output, or sends an
/// HTTP request to a runtime's port. Needs `programs` (and `filesystem` for a working
/// directory), or `runtimes` and `network = ["127.0.0.1:*"]`, for the plugin named
/// `run-command` in the agent's policy.
pub const RUN_COMMAND: Builtin = Builtin {
    name: "run-command",
    topics: &["run_command"],
    read_only: &[],
    component: include_bytes!(env!("FERRY_BUILTIN_RUN_COMMAND")),
};

/// The plugins an agent serves unless its configuration turns built-ins off.
pub fn all() -> &'static [Builtin] {
    &[ECHO, RUNTIMES, ORCHESTRATOR, RUN_COMMAND]
}

/// Plugins that exist for tests. No agent serves them unless a test loads them.
pub mod fixtures {
    use super::Builtin;

    /// `faulty`: misbehaves on purpose, one way per topic (see `plugins/faulty/src/lib.rs`):
    ///
    /// - `fault.trap`: executes `unreachable`;
    /// - `fault.panic`: panics (a trap, since plugins are built with `panic = "abort"`);
    /// - `fault.loop`: spins forever without checking `cancelled()`;
    /// - `fault.sleep`: sleeps for an hour inside a host call;
    /// - `fault.fail`: returns `error.failed`;
    /// - `fault.memory`: allocates until allocation fails;
    /// - `fault.cancel`: loops until `cancelled()` turns true, then returns `error.cancelled`;
    /// - `fault.print`: writes 100 000 lines to stdout and 3 to stderr, then succeeds;
    /// - `fault.nap`: sleeps for the milliseconds its payload names, then succeeds.
    pub const FAULTY: Builtin = Builtin {
        name: "faulty",
        topics: &[
            "fault.trap",
            "fault.panic",
            "fault.loop",
            "fault.sleep",
            "fault.fail",
            "fault.memory",
            "fault.cancel",
            "fault.print",
            "fault.nap",
        ],
        read_only: &[],
        component: include_bytes!(env!("FERRY_FIXTURE_FAULTY")),
    };

    /// `probe`: reaches outside its sandbox when asked (see `plugins/probe/src/lib.rs`), and
    /// returns what happened, refusals as `error.denied` with the system's message:
    ///
    /// - `probe.read`, `probe.list`: read a file, list a directory (payload: the path);
    /// - `probe.write`: write a file (payload: the path, a newline, the content);
    /// - `probe.env`: read an environment variable (payload: its name);
    /// - `probe.connect`: open a TCP connection (payload: `host:port`);
    /// - `probe.metrics.now`, `probe.metrics.history`, `probe.kv.*`: call the `metrics` and
    ///   `kv` interfaces;
    /// - `probe.process.run`: start a program (payload: its path, then one argument per line)
    ///   and return its exit (`code=…`, `signal=…`, `stopped=…`, `truncated=…`, `stderr=…`,
    ///   then `stdout:` and its output); `probe.process.run-timeout` takes a timeout in ms on
    ///   a first line. A program stopped by a cancel ends the command as cancelled.
    pub const PROBE: Builtin = Builtin {
        name: "probe",
        topics: &[
            "probe.read",
            "probe.write",
            "probe.list",
            "probe.env",
            "probe.connect",
            "probe.metrics.now",
            "probe.metrics.history",
            "probe.kv.set",
            "probe.kv.set-big",
            "probe.kv.get",
            "probe.kv.delete",
            "probe.kv.list",
            "probe.process.run",
            "probe.process.run-timeout",
            "probe.data",
        ],
        read_only: &[],
        component: include_bytes!(env!("FERRY_FIXTURE_PROBE")),
    };

    /// `ticker`: a `wasi:cli` program, not a plugin, for component runtimes: `ticker [MILLIS]`
    /// prints `tick N $GREETING` every MILLIS (100 by default) forever; `ticker exit CODE`
    /// exits with CODE.
    pub const TICKER: &[u8] = include_bytes!(env!("FERRY_FIXTURE_TICKER"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every component starts with the component-model preamble: `\0asm`, then the component
    /// layer's version and kind, unlike a core module's `\x01\0\0\0`.
    #[test]
    fn embeds_components() {
        for builtin in all().iter().chain([&fixtures::FAULTY, &fixtures::PROBE]) {
            assert!(
                builtin.component.starts_with(b"\0asm") && builtin.component[4..8] != [1, 0, 0, 0],
                "{} is not a wasm component",
                builtin.name
            );
            assert!(!builtin.topics.is_empty());
            for topic in builtin.read_only {
                assert!(
                    builtin.topics.contains(topic),
                    "{topic} is not a topic of {}",
                    builtin.name
                );
            }
        }
    }
}
