//! Released WIT versions are frozen: a plugin built against `ferry:plugin@0.1.0` last year
//! must still link against this year's agent, so `wit/<version>/` never changes once released.
//! Each served version's files are held to the digest recorded here; new interfaces go into
//! the next version (a new folder, a new entry in `ferry_protocol::WIT_VERSIONS`, its own
//! bindings module in the host), and every folder under `wit/` is a served version.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Each released version, with the SHA-256 of its folder as [`digest_of`] computes it.
const FROZEN: &[(&str, &str)] = &[(
    "0.1.0",
    "73f212cfe937c08e6b0d4ffae9e18d506a65d27c51b238224a7c2111be6c2ae6",
)];

fn wit_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit")
}

/// Every file of the folder, by name, as `name NUL contents NUL`, hashed.
fn digest_of(folder: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", folder.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let mut hash = Sha256::new();
    for file in files {
        hash.update(file.file_name().unwrap().to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update(std::fs::read(&file).unwrap());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

#[test]
fn released_wit_versions_are_frozen_and_every_folder_is_served() {
    let served: Vec<&str> = ferry_protocol::WIT_VERSIONS.to_vec();
    let frozen: Vec<&str> = FROZEN.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        served, frozen,
        "every served version is released and frozen: record the new one's digest here"
    );
    let mut folders: Vec<String> = std::fs::read_dir(wit_root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    assert_eq!(
        folders, served,
        "a folder under wit/ that ferry does not serve, or a served version without one"
    );
    for (version, recorded) in FROZEN {
        let now = digest_of(&wit_root().join(version));
        assert_eq!(
            &now, recorded,
            "wit/{version} changed, but it is released and frozen: agents and plugins built \
             against it rely on it as it is. Put it back, and put new interfaces into the next \
             version (wit/<next>/, added to ferry_protocol::WIT_VERSIONS with its own bindings \
             module in ferry-host)"
        );
    }
}
