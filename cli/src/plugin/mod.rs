//! `ferry plugin`: write plugins and test them on this machine, without a server; push them to a
//! server and assign them to agents.

mod build;
mod cases;
mod componentize;
mod grant;
mod local;
mod new;
mod registry;
mod run;
mod test;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PluginCommand {
    /// Run a plugin on this machine: one command (--topic), or every case in a TOML file.
    ///
    /// The plugin runs without a server or an agent, but in the same sandbox and with the same
    /// limits an agent gives it.
    ///
    /// With --topic, runs one command: progress and logs go to stderr as they happen, the
    /// output to stdout (pretty-printed when it is JSON), and the exit status is 0 only if the
    /// command succeeded. The first Ctrl-C cancels the command; the plugin sees
    /// `cancelled()` turn true.
    ///
    /// With a cases file, runs every case in it, checks what each produced, and prints one
    /// line per case and then "N passed, N failed".
    ///
    /// Examples:
    ///
    ///   ferry plugin test hello.wasm --topic hello --payload '{"name":"ferry"}'
    ///
    ///   ferry plugin test hello.wasm cases.toml
    Test(test::TestArgs),
    /// Write a new plugin project that builds and passes `ferry plugin test` as it is.
    New(new::NewArgs),
    /// Upload a plugin (component and manifest) to the server, which checks, stores and signs
    /// it; with --to, assign it to agents at once.
    ///
    /// Examples:
    ///
    ///   ferry plugin push target/wasm32-wasip2/release/hello.wasm --manifest ferry.toml --to all
    ///
    ///   ferry plugin push hello.wasm --to env=prod,region=eu
    Push(registry::PushArgs),
    /// Assign a pushed version to agents (all, or those with every given label); agents fetch
    /// it and serve its topics without a restart, and commands already running finish on the
    /// version they started with.
    Assign(registry::AssignArgs),
    /// Go back to the plugin's previous assignment.
    Rollback(registry::RollbackArgs),
    /// Stop serving the plugin on every agent.
    Unassign(registry::NameArgs),
    /// Delete one version of a plugin from the server, or (without a version) the whole
    /// plugin with its assignment history. Refused while what it would delete is assigned.
    Delete(registry::DeleteArgs),
    /// List the pushed plugins, their versions and assignments.
    List(crate::ListArgs),
    /// Show one plugin: versions, digests, assignment history, and which agent has which
    /// version (or why it could not get it).
    Show(registry::NameArgs),
    /// Build the plugin project in this folder with its language's tools; the component goes
    /// to build/NAME.wasm.
    ///
    /// The language is told by the project's files: Cargo.toml (rust), go.mod (go),
    /// package.json (js), app.py (python), src/*.c (c). C and Go toolchains emit a WASI
    /// preview-1 module, which ferry turns into a component itself with the preview-1
    /// adapter. A missing tool is named with the package that provides it.
    ///
    /// The component's path is printed on stdout, the build's progress on stderr.
    Build(build::BuildArgs),
}

impl PluginArgs {
    /// True for the subcommands that only talk to the server and print (no plugin runs, no
    /// toolchain is started): see `main`'s SIGPIPE handling.
    pub fn only_prints(&self) -> bool {
        matches!(
            self.command,
            PluginCommand::Push(_)
                | PluginCommand::Assign(_)
                | PluginCommand::Rollback(_)
                | PluginCommand::Unassign(_)
                | PluginCommand::Delete(_)
                | PluginCommand::List(_)
                | PluginCommand::Show(_)
        )
    }
}

pub async fn run(args: PluginArgs) -> Result<()> {
    match args.command {
        PluginCommand::Test(args) => test::run(args).await,
        PluginCommand::New(args) => new::run(args),
        PluginCommand::Push(args) => registry::push(args).await,
        PluginCommand::Assign(args) => registry::assign(args).await,
        PluginCommand::Rollback(args) => registry::rollback(args).await,
        PluginCommand::Unassign(args) => registry::unassign(args).await,
        PluginCommand::Delete(args) => registry::delete(args).await,
        PluginCommand::List(args) => registry::list(args).await,
        PluginCommand::Show(args) => registry::show(args).await,
        PluginCommand::Build(args) => build::run(args),
    }
}
