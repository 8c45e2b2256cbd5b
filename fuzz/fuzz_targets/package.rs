//! Plugin packages: decoding arbitrary bytes is an error or a package that encodes back to
//! a stable form; verification of arbitrary bytes against a key fails cleanly, and never
//! decodes before the digest and signature checks.

#![no_main]

use ferry_fuzz::{allocation_bound, largest_allocation};
use ferry_protocol::package::{self, Digest, Package, PublicKey, SigningKey};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static KEY: LazyLock<SigningKey> = LazyLock::new(SigningKey::generate);

fuzz_target!(|data: &[u8]| {
    let (decoded, largest) = largest_allocation(|| Package::decode(data));
    assert!(
        largest <= allocation_bound(data.len()),
        "decoding allocated {largest} bytes at once for {} bytes of input",
        data.len()
    );
    if let Ok(decoded) = decoded {
        let bytes = decoded.encode();
        let again = Package::decode(&bytes).expect("an encoded package decodes");
        assert_eq!(decoded, again);
        assert_eq!(bytes, again.encode(), "encoding is not stable");
    }

    // With the right digest and the server's signature, verification decodes exactly what
    // `decode` does; with the input's own bytes as the signature, it fails.
    let digest = Digest::of(data);
    let signed = package::verify(data, &digest, &KEY.sign(&digest), &KEY.public_key());
    assert_eq!(signed.ok(), Package::decode(data).ok());
    let forged = data.get(..64).unwrap_or(data);
    assert!(package::verify(data, &digest, forged, &KEY.public_key()).is_err());
    let _ = package::verify(data, &digest, forged, &PublicKey([7; 32]));
});
