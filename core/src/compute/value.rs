//! What [`ComputeCache`](super::ComputeCache) stores: [`CacheValue`] and its
//! implementations for raw [`Bytes`], [`Envelope`] and serde types ([`Json`]).

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::{Decoded, Envelope};
use crate::error::{Error, Result};
use crate::transport::{MaybeSend, MaybeSync};

/// A value [`ComputeCache`](super::ComputeCache) can store, read back and share between
/// coalesced callers.
///
/// Values that know their fresh and stale deadlines ([`Envelope`]) get fail-safe serving:
/// after `fresh_until` they are served stale while a refresh is attempted, until
/// `stale_until`. Values that do not ([`Bytes`], [`Json`]) are fresh for as long as the cache
/// keeps them.
pub trait CacheValue: Clone + MaybeSend + MaybeSync + 'static {
    /// The stored bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] when the value cannot be represented.
    fn encode(&self) -> Result<Bytes>;

    /// Reads stored bytes back; `None` for bytes that are not a value of this type (counted
    /// as corrupt and treated as a miss, never an error).
    fn decode(bytes: &Bytes) -> Option<Self>;

    /// The fresh and stale deadlines (unix ms) this value carries, if it carries any:
    /// `(fresh_until, stale_until)`.
    fn windows(&self) -> Option<(Option<u64>, Option<u64>)> {
        None
    }

    /// Stamps fresh and stale deadlines (unix ms) on a value about to be stored. Values that
    /// cannot carry them ignore the call (the default).
    fn set_windows(&mut self, fresh_until: Option<u64>, stale_until: Option<u64>) {
        let _ = (fresh_until, stale_until);
    }

    /// When a stored value was written (unix ms), if it records it (an
    /// [`Envelope`](crate::Envelope) does): [`Fetched::stored_at_ms`](super::Fetched).
    fn stored_at_ms(&self) -> Option<u64> {
        None
    }
}

impl CacheValue for Bytes {
    fn encode(&self) -> Result<Bytes> {
        Ok(self.clone())
    }

    fn decode(bytes: &Bytes) -> Option<Self> {
        Some(bytes.clone())
    }
}

/// Envelopes carry fail-safe windows (`fresh_until` / `stale_until`). A legacy raw-text
/// value (go-deep-agent) decodes as an envelope without windows: fresh while it exists.
impl CacheValue for Envelope {
    fn encode(&self) -> Result<Bytes> {
        Ok(Envelope::encode(self))
    }

    fn decode(bytes: &Bytes) -> Option<Self> {
        match Envelope::decode(bytes) {
            Decoded::Envelope(e) | Decoded::Legacy(e) => Some(e),
            Decoded::Corrupt(_) => None,
        }
    }

    fn windows(&self) -> Option<(Option<u64>, Option<u64>)> {
        Some((self.fresh_until, self.stale_until))
    }

    fn set_windows(&mut self, fresh_until: Option<u64>, stale_until: Option<u64>) {
        self.fresh_until = fresh_until;
        self.stale_until = stale_until;
    }

    fn stored_at_ms(&self) -> Option<u64> {
        Envelope::stored_at_ms(self)
    }
}

/// A serde value stored as compact JSON (what the `*_json` methods of
/// [`ComputeCache`](super::ComputeCache) use).
#[derive(Debug, Clone, PartialEq)]
pub struct Json<T>(pub T);

impl<T> CacheValue for Json<T>
where
    T: Serialize + DeserializeOwned + Clone + MaybeSend + MaybeSync + 'static,
{
    fn encode(&self) -> Result<Bytes> {
        serde_json::to_vec(&self.0)
            .map(Bytes::from)
            .map_err(|e| Error::Serialize(e.to_string()))
    }

    fn decode(bytes: &Bytes) -> Option<Self> {
        serde_json::from_slice(bytes).ok().map(Json)
    }
}

/// Where a stored value stands at `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    Fresh,
    /// Past fresh, inside its stale window: servable when a refresh fails or is slow.
    Stale,
    /// Past its stale window too: a miss.
    Dead,
}

pub(crate) fn freshness<V: CacheValue>(value: &V, now_ms: u64) -> Freshness {
    match value.windows() {
        None | Some((None, _)) => Freshness::Fresh,
        Some((Some(fresh), _)) if now_ms < fresh => Freshness::Fresh,
        Some((_, Some(stale))) if now_ms < stale => Freshness::Stale,
        Some(_) => Freshness::Dead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_windows_drive_freshness() {
        let e = Envelope::new("x", "m", 0).with_windows(Some(100), Some(200));
        assert_eq!(freshness(&e, 99), Freshness::Fresh);
        assert_eq!(freshness(&e, 100), Freshness::Stale);
        assert_eq!(freshness(&e, 200), Freshness::Dead);
        let no_windows = Envelope::new("x", "m", 0);
        assert_eq!(freshness(&no_windows, u64::MAX), Freshness::Fresh);
        assert_eq!(
            freshness(&Bytes::from_static(b"v"), u64::MAX),
            Freshness::Fresh
        );
    }

    #[test]
    fn json_round_trips_and_rejects_other_bytes() {
        let v = Json(vec![1u32, 2, 3]);
        let bytes = v.encode().unwrap();
        assert_eq!(&bytes[..], b"[1,2,3]");
        assert_eq!(Json::<Vec<u32>>::decode(&bytes), Some(v));
        assert_eq!(Json::<Vec<u32>>::decode(&Bytes::from_static(b"\xff")), None);
    }

    #[test]
    fn corrupt_envelope_is_none_and_legacy_text_is_a_value() {
        assert_eq!(
            <Envelope as CacheValue>::decode(&Bytes::from_static(b"{\"v\":1,\"resp")),
            None
        );
        let legacy = <Envelope as CacheValue>::decode(&Bytes::from_static(b"Paris.")).unwrap();
        assert_eq!(legacy.response, "Paris.");
    }
}
