//! Message decoding: arbitrary bytes as one CBOR `Message`. Whatever decodes must encode, and
//! decode again to the same message and the same bytes; no input may panic, and the allowlist
//! must answer for every message, sender and stream.
//!
//! Random bytes rarely spell a variant's name, so the input is also read a second way: its
//! first byte picks a variant and the rest, as any CBOR value, becomes that variant's body.
//! Every message type is reached that way, and the seed corpus (`tests/e2e/fuzz.rs` writes
//! one real message of each type) takes the fuzzer into their fields.

#![no_main]

use ciborium::Value;
use ferry_fuzz::{allocation_bound, largest_allocation};
use ferry_protocol::{Message, MessageKind, Peer, StreamKind, codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (decoded, largest) = largest_allocation(|| codec::decode(data));
    assert!(
        largest <= allocation_bound(data.len()),
        "decoding allocated {largest} bytes at once for {} bytes of input",
        data.len()
    );
    if let Ok(message) = decoded {
        round_trip(&message);
    }

    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let kind = MessageKind::ALL[usize::from(pick) % MessageKind::ALL.len()].name();
    let Ok(value) = ciborium::from_reader::<Value, _>(body) else {
        return;
    };
    let mut bytes = Vec::new();
    ciborium::into_writer(
        &Value::Map(vec![(Value::Text(kind.into()), value)]),
        &mut bytes,
    )
    .expect("writing to a Vec cannot fail");
    if let Ok(message) = codec::decode(&bytes) {
        assert_eq!(message.kind(), kind);
        round_trip(&message);
    }
});

fn round_trip(message: &Message) {
    let once = codec::encode(message).expect("a decoded message encodes");
    let again = codec::decode(&once).expect("an encoded message decodes");
    // Debug text, not `==`: a NaN in a metric is the same message, though not equal to itself.
    assert_eq!(format!("{message:?}"), format!("{again:?}"));
    assert_eq!(
        once,
        codec::encode(&again).expect("encodes"),
        "encoding is not stable"
    );
    for from in [Peer::Agent, Peer::Server] {
        for &stream in StreamKind::ALL {
            match message.check_allowed(from, stream) {
                Ok(()) => assert!(message.message_kind().allowed(from, stream)),
                Err(refusal) => {
                    assert!(refusal.to_string().contains(message.kind()));
                    let named = refusal
                        .allowed
                        .split([',', ' '])
                        .any(|word| word == message.kind());
                    assert!(!named, "{refusal} names the message it refuses");
                }
            }
        }
    }
}
