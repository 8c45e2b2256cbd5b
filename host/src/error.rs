//! What can go wrong when loading a plugin, and how a command can end other than with a result.

use ferry_protocol::message::Outcome;

/// Why the plugin host could not start, or could not load a plugin.
///
/// The messages name the plugin and say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The wasm engine could not be set up (a configuration the platform does not support).
    #[error("could not create the wasm engine: {0}")]
    Engine(String),

    /// The bytes are not WebAssembly at all.
    #[error(
        "plugin '{name}' is not WebAssembly: {len} bytes that do not start with the `\\0asm` magic; \
         give the agent the `.wasm` component a plugin build produced"
    )]
    NotWasm {
        /// The plugin's name.
        name: String,
        /// How many bytes were given.
        len: usize,
    },

    /// The bytes are a core wasm module, not a component.
    #[error(
        "plugin '{name}' is a core wasm module, not a component; build it for the wasm32-wasip2 \
         target, or turn the module into a component (e.g. `wasm-tools component new`)"
    )]
    NotAComponent {
        /// The plugin's name.
        name: String,
    },

    /// The component is malformed, or uses features the engine does not support.
    #[error("plugin '{name}' could not be compiled: {reason}")]
    Compile {
        /// The plugin's name.
        name: String,
        /// What the compiler said.
        reason: String,
    },

    /// The component is valid but does not implement the ferry plugin world.
    #[error(
        "plugin '{name}' is not a ferry plugin for ferry:plugin@{}: {reason}",
        crate::bindings::served()
    )]
    NotAPlugin {
        /// The plugin's name.
        name: String,
        /// What is missing, and what to build against.
        reason: String,
    },

    /// The component is a plugin for a version of the `ferry:plugin` world this host does not
    /// serve (a newer one, or one no longer served).
    #[error(
        "plugin '{name}' was built for ferry:plugin@{wanted} (it exports `ferry:plugin/handler@{wanted}`), \
         which this agent does not serve: it serves ferry:plugin@{served}; {what_to_do}"
    )]
    UnservedVersion {
        /// The plugin's name.
        name: String,
        /// The version it was built for.
        wanted: String,
        /// The versions this host serves, oldest first, separated by commas.
        served: String,
        /// Upgrade the agent, or rebuild the plugin, as the versions call for.
        what_to_do: String,
    },

    /// The component imports something this agent does not provide.
    #[error("plugin '{name}' needs something this agent does not provide: {reason}")]
    Link {
        /// The plugin's name.
        name: String,
        /// Which import is missing, and what the agent provides.
        reason: String,
    },
}

/// How a command ended, when it did not succeed.
///
/// The first five mirror the WIT `error` variant a plugin returns; the last two are the host's
/// own verdicts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// The plugin rejected the payload.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The plugin refused to do what the command asks.
    #[error("denied: {0}")]
    Denied(String),
    /// The plugin could not carry the command out.
    #[error("failed: {0}")]
    Failed(String),
    /// The command was cancelled: the plugin saw `cancelled()` and stopped, or the host stopped
    /// a plugin that did not stop within the grace period after the cancel.
    #[error("cancelled")]
    Cancelled,
    /// The command ran past its deadline (the host stopped it), or the plugin itself gave up
    /// waiting for something.
    #[error("timed out")]
    TimedOut,
    /// The plugin crashed: trap, panic, memory limit, fuel budget — the message says which,
    /// with the wasm backtrace summary if any.
    #[error("crashed: {0}")]
    Crashed(String),
    /// could not instantiate (e.g. instance limit reached)
    #[error("not started: {0}")]
    Instantiate(String),
}

/// The outcome a plugin's error is reported as, by an agent and by `ferry plugin test` alike.
impl From<InvokeError> for Outcome {
    fn from(error: InvokeError) -> Outcome {
        match error {
            InvokeError::InvalidInput(m) => Outcome::InvalidInput(m),
            InvokeError::Denied(m) => Outcome::Denied(m),
            InvokeError::Failed(m) => Outcome::Failed(m),
            InvokeError::Cancelled => Outcome::Cancelled,
            InvokeError::TimedOut => Outcome::TimedOut,
            InvokeError::Crashed(m) => Outcome::Crashed(m),
            InvokeError::Instantiate(m) => Outcome::Rejected(m),
        }
    }
}
