//! Compiled components cached on disk, so that an agent restart does not compile its plugins
//! again (a few milliseconds for a small Rust plugin, 20 s for a JavaScript or Python one).
//!
//! An entry is keyed by the SHA-256 of the component's bytes and the engine's
//! compatibility hash (wasmtime version, target, and every setting that changes compiled code,
//! fuel metering included), so a plugin built differently, or an agent upgraded to another
//! wasmtime, simply misses. Its file name is the hex SHA-256 of both, and its contents are
//!
//! ```text
//! MAGIC (8 bytes) | key (32 bytes) | SHA-256 of the artifact (32 bytes) | the artifact
//! ```
//!
//! where the artifact is `Component::serialize`'s output. An entry is written to a temporary
//! file in the same directory and renamed into place, so it appears whole or not at all; on a
//! hit it is read, checked against its checksum and key, and only then deserialized. A corrupt
//! entry (bad checksum, truncated, or refused by wasmtime) is reported, deleted and compiled
//! again. The cache never fails a load: when it cannot be read or written, the plugin is
//! compiled as if there were no cache, with a warning.
//!
//! The verified bytes are deserialized from memory, not mapped from the file, so nothing depends on
//! the file after the check.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every entry; the last one is the format's version.
const MAGIC: [u8; 8] = *b"ferryCC\x01";
const HEADER: usize = MAGIC.len() + 32 + 32;
/// Entries are named `<key>.cwasm`; temporary files start with a dot.
const EXTENSION: &str = "cwasm";

/// The on-disk cache of one host.
#[derive(Debug)]
pub(crate) struct ComponentCache {
    dir: PathBuf,
}

/// What an entry is cached under.
pub(crate) struct Key([u8; 32]);

impl Key {
    fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// The SHA-256 of an engine's compatibility hash: equal for engines whose compiled code is
/// interchangeable.
pub(crate) fn engine_tag(engine: &Engine) -> [u8; 32] {
    /// Feeds whatever is hashed into SHA-256, which, unlike std's hasher, is stable.
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            unreachable!("only the digest is used")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut sha = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut sha);
    sha.0.finalize().into()
}

impl ComponentCache {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The key of `component` compiled by an engine with `tag`.
    pub(crate) fn key(component: &[u8], tag: &[u8; 32]) -> Key {
        let mut sha = Sha256::new();
        sha.update(MAGIC);
        sha.update(Sha256::digest(component));
        sha.update(tag);
        Key(sha.finalize().into())
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.dir.join(format!("{}.{EXTENSION}", key.hex()))
    }

    /// The cached compilation of `key`, if there is a sound one. A corrupt entry is deleted.
    pub(crate) fn get(&self, engine: &Engine, name: &str, key: &Key) -> Option<Component> {
        let path = self.path(key);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(
                    plugin = name,
                    path = %path.display(),
                    error = %e,
                    "cannot read the compiled-plugin cache; compiling the plugin"
                );
                return None;
            }
        };
        let artifact = match check(&bytes, key) {
            Ok(artifact) => artifact,
            Err(problem) => {
                self.discard(name, &path, &problem);
                return None;
            }
        };
        // SAFETY: `Component::deserialize` trusts its input to be what `Component::serialize`
        // produced for a compatible engine; crafted bytes could make wasmtime run arbitrary
        // native code. These bytes are such output:
        // - they come from this host's own cache directory, which `put` creates for the agent's
        //   user alone (0700); entries get there only through `put`, which writes the
        //   serialization of a component this host compiled and checked, to a temporary file
        //   that is renamed into place whole;
        // - `check` has just verified, on these very bytes in memory, the SHA-256 `put` stored
        //   with them and the key they were stored under, so a torn, truncated, bit-flipped or
        //   misplaced entry is refused above; and since wasmtime copies the bytes, nothing
        //   depends on the file after this call (unlike `deserialize_file`, which maps the file
        //   and would run whatever it later changes into);
        // - wasmtime itself refuses an artifact from another wasmtime version, target or
        //   configuration.
        // The checksum guards against accidents, not against an attacker: whoever can write to
        // the cache directory can make the agent run code, as whoever can write its plugin files
        // or its configuration can.
        match unsafe { Component::deserialize(engine, artifact) } {
            Ok(component) => Some(component),
            Err(e) => {
                self.discard(
                    name,
                    &path,
                    &format!("wasmtime refused it: {}", super::invoke::chain(&e)),
                );
                None
            }
        }
    }

    fn discard(&self, name: &str, path: &Path, problem: &str) {
        tracing::warn!(
            plugin = name,
            path = %path.display(),
            problem,
            "a compiled-plugin cache entry is corrupt; deleting it and compiling the plugin again"
        );
        if let Err(e) = fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete the corrupt cache entry");
        }
    }

    /// Stores `component` under `key`; a failure is logged and otherwise ignored.
    pub(crate) fn put(&self, name: &str, key: &Key, component: &Component) {
        let stored = component
            .serialize()
            .map_err(|e| io::Error::other(super::invoke::chain(&e)))
            .and_then(|artifact| self.write(key, &artifact));
        if let Err(e) = stored {
            tracing::warn!(
                plugin = name,
                dir = %self.dir.display(),
                error = %e,
                "cannot write to the compiled-plugin cache; the plugin will be compiled again at the next start"
            );
        }
    }

    fn write(&self, key: &Key, artifact: &[u8]) -> io::Result<()> {
        create_private_dir(&self.dir)?;
        let path = self.path(key);
        let tmp = self.dir.join(format!(
            ".{}.{}-{:016x}.tmp",
            key.hex(),
            std::process::id(),
            rand::random::<u64>()
        ));
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            file.write_all(&encode(key, artifact))?;
            // A crash right after the rename could otherwise leave an entry whose data never
            // reached the disk; the checksum would catch it, but it would cost a compile.
            file.sync_data()?;
            fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

/// An entry's bytes: header, then the artifact.
fn encode(key: &Key, artifact: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER + artifact.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&key.0);
    bytes.extend_from_slice(&Sha256::digest(artifact));
    bytes.extend_from_slice(artifact);
    bytes
}

/// The artifact in an entry's bytes, or what is wrong with them.
fn check<'a>(bytes: &'a [u8], key: &Key) -> Result<&'a [u8], String> {
    if bytes.len() < HEADER {
        return Err(format!(
            "it has {} bytes, fewer than its {HEADER}-byte header",
            bytes.len()
        ));
    }
    let (header, artifact) = bytes.split_at(HEADER);
    if header[..MAGIC.len()] != MAGIC {
        return Err("it does not start with the cache's magic bytes".into());
    }
    if header[MAGIC.len()..MAGIC.len() + 32] != key.0 {
        return Err("it was stored under another key".into());
    }
    if header[MAGIC.len() + 32..] != Sha256::digest(artifact)[..] {
        return Err("its checksum does not match its contents".into());
    }
    Ok(artifact)
}

/// Creates `dir` and its missing parents, readable by the agent's user alone on Unix.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers for the host's tests to damage entries on purpose.

    use super::*;

    /// The entries (not temporary files) in `dir`.
    pub(crate) fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == EXTENSION))
                    .collect()
            })
            .unwrap_or_default();
        entries.sort();
        entries
    }

    /// Rewrites the entry at `path` with `artifact` and a matching header, so that only
    /// wasmtime can tell that it is not a compiled component.
    pub(crate) fn replace_artifact(path: &Path, artifact: &[u8]) {
        let old = fs::read(path).unwrap();
        let key = Key(old[MAGIC.len()..MAGIC.len() + 32].try_into().unwrap());
        fs::write(path, encode(&key, artifact)).unwrap();
    }
}
