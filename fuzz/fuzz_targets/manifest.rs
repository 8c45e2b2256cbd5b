//! The plugin manifest parser on arbitrary text: an error, never a panic; and a manifest that
//! parses must write out as TOML that parses back to the same manifest.

#![no_main]

use ferry_manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = Manifest::from_toml(text) else {
        return;
    };
    let written = manifest.to_toml();
    let again = Manifest::from_toml(&written).unwrap_or_else(|e| {
        panic!("a valid manifest wrote TOML that does not parse: {e}\n{written}")
    });
    assert_eq!(
        manifest, again,
        "the manifest changed through TOML:\n{written}"
    );
});
