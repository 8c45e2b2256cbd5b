//! `ferry cert`: certificates from a server's CA, for agents installed by hand.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ferry_protocol::AgentId;
use ferry_protocol::pki::{DEV_CERT_VALIDITY, PkiDir, write_file};

#[derive(Debug, clap::Args)]
pub struct CertArgs {
    #[command(subcommand)]
    pub command: CertCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Issue a client certificate for an agent from the server's CA; writes <id>.pem, <id>.key,
    /// ca.pem and plugin-signing.pub (the key pushed plugins are checked with) into --out, ready
    /// for `ferry agent --cert --key --ca`.
    Issue {
        /// The agent's id; it goes into the certificate as ferry://agent/<id>.
        agent_id: String,
        /// The server's data directory (its CA is under pki/).
        #[arg(long, default_value = "ferry-server")]
        data_dir: PathBuf,
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// How long the certificate is valid (e.g. 30d, 1y).
        #[arg(long, value_parser = humantime::parse_duration)]
        validity: Option<std::time::Duration>,
    },
}

pub fn run(args: CertArgs) -> Result<()> {
    match args.command {
        CertCommand::Issue {
            agent_id,
            data_dir,
            out,
            validity,
        } => {
            let id = AgentId::new(agent_id)?;
            let pki_dir = data_dir.join("pki");
            if !pki_dir.join("ca.pem").exists() {
                bail!(
                    "no CA under {}: start `ferry server --data-dir {}` once to create it, or point --data-dir at the server's data directory",
                    pki_dir.display(),
                    data_dir.display()
                );
            }
            let pki = PkiDir::open_or_create(&pki_dir, &[])?;
            let issued = pki
                .ca()?
                .issue_agent(&id, validity.unwrap_or(DEV_CERT_VALIDITY))?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let cert = out.join(format!("{id}.pem"));
            let key = out.join(format!("{id}.key"));
            let ca = out.join("ca.pem");
            write_file(&key, issued.key_pem.as_bytes(), true)?;
            write_file(&cert, issued.cert_pem.as_bytes(), false)?;
            std::fs::copy(pki.ca_cert_path(), &ca)
                .with_context(|| format!("cannot write {}", ca.display()))?;
            let signing_key = pki_dir.join(ferry_server::PLUGIN_KEY_PUB);
            let plugin_key = out.join(ferry_server::PLUGIN_KEY_PUB);
            std::fs::copy(&signing_key, &plugin_key).with_context(|| {
                format!(
                    "cannot copy {} to {}; start the server once to create it",
                    signing_key.display(),
                    plugin_key.display()
                )
            })?;
            println!("{}", cert.display());
            println!("{}", key.display());
            println!("{}", ca.display());
            println!("{}", plugin_key.display());
            eprintln!(
                "start the agent with: ferry agent --server <host:port> --cert {} --key {} --ca {}",
                cert.display(),
                key.display(),
                ca.display()
            );
            Ok(())
        }
    }
}
