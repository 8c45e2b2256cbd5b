//! Which installation of an agent this is: the `instance` of its Hello.
//!
//! One certificate on two hosts at once (a cloned machine, a data directory copied to another
//! host) would run every command twice, once in each host's journal. The server tells them
//! apart by this id and refuses the second while the first is connected and answering. The id
//! is random, kept in `<data_dir>/instance` with the fingerprint of the host it was made on
//! (`/etc/machine-id` and the host name); a file found on another host — the directory was
//! copied or moved — gets a new id. A restart on the same host keeps its id, so it takes over
//! its old connection at once.
//!
//! What it cannot see: a clone that keeps both the machine id and the host name looks like
//! the same host; give each clone its own machine id (`systemd-machine-id-setup`).

use std::path::Path;

use ferry_protocol::pki::write_file;
use sha2::{Digest as _, Sha256};

/// The file in the data directory.
pub const FILE: &str = "instance";

/// This host, as far as the agent can tell from inside it.
fn host_fingerprint() -> String {
    let machine_id = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .unwrap_or_default();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut hash = Sha256::new();
    hash.update(machine_id.trim().as_bytes());
    hash.update([0]);
    hash.update(hostname.trim().as_bytes());
    hex::encode(&hash.finalize()[..16])
}

/// The instance id of the agent whose data directory is `data_dir`: the one kept there when
/// it was made on this host, otherwise a new one, written for next time.
pub(crate) fn load_or_create(data_dir: &Path) -> Result<String, String> {
    let path = data_dir.join(FILE);
    let host = host_fingerprint();
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Some((id, made_on)) = text.trim().split_once(' ')
        && made_on == host
        && !id.is_empty()
    {
        return Ok(id.to_string());
    }
    let id = hex::encode(rand::random::<[u8; 16]>());
    write_file(&path, format!("{id} {host}\n").as_bytes(), false)
        .map_err(|e| format!("cannot record this agent's instance id: {e}"))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_id_lasts_on_its_host_and_is_made_again_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(
            load_or_create(dir.path()).unwrap(),
            first,
            "kept across starts"
        );
        // The same file found on another host (its fingerprint differs): a new instance.
        std::fs::write(dir.path().join(FILE), format!("{first} another-host\n")).unwrap();
        let moved = load_or_create(dir.path()).unwrap();
        assert_ne!(moved, first);
        assert_eq!(load_or_create(dir.path()).unwrap(), moved);
        // Another data directory on this host: another instance.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).unwrap(), moved);
    }
}
