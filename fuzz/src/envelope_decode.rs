//! `Envelope::decode` on arbitrary stored bytes.
//!
//! Invariants: never panics; an envelope re-encodes to bytes that decode to the same
//! envelope; legacy text is returned unchanged with `v` = 0.

use larder_core::{Decoded, Envelope};

/// Decodes `data` as a stored value and checks the invariants above.
pub fn check(data: &[u8]) {
    match Envelope::decode(data) {
        Decoded::Envelope(e) => {
            let again = Envelope::decode(&e.encode());
            assert_eq!(
                again,
                Decoded::Envelope(e),
                "an envelope must survive re-encoding"
            );
        }
        Decoded::Legacy(e) => {
            assert_eq!(e.v, 0, "legacy values carry v = 0");
            assert_eq!(
                e.response.as_bytes(),
                data,
                "legacy text is kept byte for byte"
            );
        }
        Decoded::Corrupt(why) => assert!(!why.is_empty(), "a corrupt value says why"),
    }
}
