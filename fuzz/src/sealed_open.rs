//! `Keyring::open` then `Envelope::decode` on arbitrary stored bytes: the read path of an
//! encrypted cache.
//!
//! Invariants: never panics; arbitrary bytes never open (AES-GCM's tag is 128 bits), except
//! a value sealed by the check itself, which opens to its plaintext under its own Redis key
//! and under no other.

use larder_core::seal::Keyring;
use larder_core::{Decoded, Envelope};

fn ring() -> &'static Keyring {
    static RING: std::sync::OnceLock<Keyring> = std::sync::OnceLock::new();
    RING.get_or_init(|| {
        Keyring::parse(
            "k2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=,k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        )
        .expect("valid test keys")
    })
}

/// Opens `data` as a stored value and checks the invariants above.
pub fn check(data: &[u8]) {
    let ring = ring();
    assert!(
        ring.open(b"larder:cache:fuzz", data).is_none(),
        "arbitrary bytes must not open"
    );
    // What the reader does with whatever opens (here: the input sealed, then opened).
    let sealed = ring
        .seal(b"larder:cache:fuzz", data)
        .expect("the system random source works");
    let opened = ring
        .open(b"larder:cache:fuzz", &sealed)
        .expect("a sealed value opens");
    assert_eq!(opened, data, "opening gives the plaintext back");
    assert!(ring.open(b"larder:cache:other", &sealed).is_none(), "bound to its key");
    if let Decoded::Corrupt(why) = Envelope::decode(&opened) {
        assert!(!why.is_empty());
    }
}
