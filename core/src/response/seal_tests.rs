//! Encrypted values and keyed hashes through the response cache.

use futures_executor::block_on;

use super::*;
use crate::seal::{HashKey, Keyring, SEALED_MAGIC};
use crate::testing::MemTransport;
use crate::transport::Commands;

const K1: &str = "k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const K2: &str = "k2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

fn cache(t: &MemTransport, keys: Option<&str>, secret: Option<&[u8]>) -> ResponseCache {
    let mut b = ResponseCache::redis(RedisCache::builder(t.clone()).prefix("p").build().unwrap())
        .clock(t.shared_clock());
    if let Some(k) = keys {
        b = b.encryption(Keyring::parse(k).unwrap());
    }
    if let Some(s) = secret {
        b = b.hash_key(HashKey::new(s.to_vec()).unwrap());
    }
    b.build().unwrap()
}

fn question() -> LlmRequest {
    LlmRequest::chat("gpt-4o-mini").user("What is the capital of France?")
}

fn none() -> CacheControl {
    CacheControl::default()
}

fn raw(t: &MemTransport, key: &str) -> Bytes {
    block_on(t.get(key.as_bytes())).unwrap().expect("stored")
}

#[test]
fn sealed_values_round_trip_and_hold_no_clear_text() {
    let t = MemTransport::new();
    let c = cache(&t, Some(K1), None);
    let key = block_on(c.put(
        &question(),
        &none(),
        &LlmResponse::new("Paris is the capital."),
    ))
    .unwrap();
    let stored = raw(&t, &key);
    assert!(stored.starts_with(SEALED_MAGIC));
    assert!(
        !stored.windows(5).any(|w| w == b"Paris"),
        "the answer is not in the stored bytes"
    );
    let got = block_on(c.get(&question(), &none()))
        .unwrap()
        .expect("a hit");
    assert_eq!(got.text(), "Paris is the capital.");
    assert_eq!(c.corrupt(), 0);
}

#[test]
fn a_value_moved_to_another_key_or_altered_is_a_counted_miss() {
    let t = MemTransport::new();
    let c = cache(&t, Some(K1), None);
    let key = block_on(c.put(&question(), &none(), &LlmResponse::new("Paris."))).unwrap();
    let other = LlmRequest::chat("gpt-4o-mini").user("Something else?");
    let other_key = c.key(&other, &none()).unwrap();
    let sealed = raw(&t, &key);
    block_on(t.set(other_key.as_bytes(), &sealed, SetOptions::ttl(None))).unwrap();
    assert!(
        block_on(c.get(&other, &none())).unwrap().is_none(),
        "moved: no longer opens"
    );
    assert_eq!(c.corrupt(), 1);
    let mut altered = sealed.to_vec();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    block_on(t.set(key.as_bytes(), &Bytes::from(altered), SetOptions::ttl(None))).unwrap();
    assert!(
        block_on(c.get(&question(), &none())).unwrap().is_none(),
        "altered"
    );
    assert_eq!(c.corrupt(), 2);
}

#[test]
fn rotation_reads_with_old_keys_and_writes_with_the_new_one() {
    let t = MemTransport::new();
    let old = cache(&t, Some(K1), None);
    block_on(old.put(&question(), &none(), &LlmResponse::new("Paris."))).unwrap();
    let rotated = cache(&t, Some(&format!("{K2},{K1}")), None);
    let got = block_on(rotated.get(&question(), &none())).unwrap();
    assert_eq!(got.map(|g| g.value.text).as_deref(), Some("Paris."));
    let q2 = LlmRequest::chat("gpt-4o-mini").user("And of Spain?");
    let key2 = block_on(rotated.put(&q2, &none(), &LlmResponse::new("Madrid."))).unwrap();
    assert_eq!(
        &raw(&t, &key2)[6..8],
        b"k2",
        "sealed under the current key id"
    );
    let retired = cache(&t, Some(K2), None);
    assert!(
        block_on(retired.get(&question(), &none()))
            .unwrap()
            .is_none(),
        "k1 is gone"
    );
    assert_eq!(retired.corrupt(), 1);
    assert!(block_on(retired.get(&q2, &none())).unwrap().is_some());
}

#[test]
fn with_encryption_on_clear_text_entries_are_not_trusted() {
    let t = MemTransport::new();
    let clear = cache(&t, None, None);
    block_on(clear.put(&question(), &none(), &LlmResponse::new("injected"))).unwrap();
    let sealed = cache(&t, Some(K1), None);
    assert!(
        block_on(sealed.get(&question(), &none()))
            .unwrap()
            .is_none()
    );
    assert_eq!(
        sealed.corrupt(),
        1,
        "a clear-text entry is a counted corrupt miss"
    );
}

#[test]
fn keyed_hashes_hide_the_request_and_are_shared_by_the_same_secret() {
    let t = MemTransport::new();
    let plain = cache(&t, None, None);
    let a = cache(&t, None, Some(b"a-secret-of-at-least-16-bytes"));
    let a2 = cache(&t, None, Some(b"a-secret-of-at-least-16-bytes"));
    let b = cache(&t, None, Some(b"another-secret-16-bytes-long!"));
    let plain_key = plain.key(&question(), &none()).unwrap();
    let a_key = a.key(&question(), &none()).unwrap();
    assert_ne!(a_key, plain_key);
    assert_eq!(a_key, a2.key(&question(), &none()).unwrap());
    assert_ne!(a_key, b.key(&question(), &none()).unwrap());
    let plain_hash = plain_key.rsplit(':').next().unwrap();
    assert!(
        !a_key.contains(plain_hash),
        "the SHA-256 of the request is not in the key"
    );
    // Per namespace (a proxy's tenant): one tenant's key says nothing about another's.
    let ns = |n: &str| a.key(&question(), &none().namespace(n)).unwrap();
    let (t1, t2) = (ns("t1"), ns("t2"));
    assert_ne!(t1.rsplit(':').next(), t2.rsplit(':').next());
    block_on(a.put(&question(), &none(), &LlmResponse::new("Paris."))).unwrap();
    assert!(block_on(a2.get(&question(), &none())).unwrap().is_some());
    assert!(block_on(b.get(&question(), &none())).unwrap().is_none());
}

#[test]
fn go_deep_agent_mode_refuses_encryption_and_keyed_hashes() {
    let t = MemTransport::new();
    let e = ResponseCache::redis(RedisCache::new(t.clone()))
        .go_deep_agent_compat()
        .encryption(Keyring::parse(K1).unwrap())
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("Mode::Larder"), "{e}");
}

/// A stream shared across processes under encryption: the entries published in Redis are
/// sealed (no event text in clear), the follower reads them all, and a forged clear `end`
/// entry cannot pass a cut stream off as complete.
mod streams {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures_util::{Stream, StreamExt};

    use super::*;
    use crate::compute::tests::support::TokioClock;
    use crate::stream::StreamError;

    #[derive(Debug)]
    struct UpErr;
    impl std::fmt::Display for UpErr {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("up")
        }
    }
    impl std::error::Error for UpErr {}
    type Body = Pin<Box<dyn Stream<Item = std::result::Result<Bytes, UpErr>> + Send>>;

    const SECRET_WORD: &str = "Zanzibar";

    fn chat_stream() -> Vec<Bytes> {
        let chunk = |c: &str| {
            format!(
                "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{c}\"}},\"finish_reason\":null}}]}}\n\n"
            )
        };
        let mut v: Vec<Bytes> = ["The ", "capital ", "is ", SECRET_WORD]
            .iter()
            .map(|c| Bytes::from(chunk(c)))
            .collect();
        v.push(Bytes::from_static(b"data: [DONE]\n\n"));
        v
    }

    fn slow(
        opens: &Arc<AtomicUsize>,
    ) -> impl FnOnce() -> std::future::Ready<std::result::Result<Body, UpErr>> + Send + use<> {
        let opens = opens.clone();
        move || {
            opens.fetch_add(1, Ordering::SeqCst);
            let body = futures_util::stream::iter(chat_stream()).then(|c| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(c)
            });
            std::future::ready(Ok(Box::pin(body) as Body))
        }
    }

    fn instance(t: &MemTransport, clock: &Arc<TokioClock>) -> ResponseCache {
        ResponseCache::redis(RedisCache::builder(t.clone()).prefix("p").build().unwrap())
            .clock(clock.clone())
            .encryption(Keyring::parse(K1).unwrap())
            .hash_key(HashKey::new(b"a-secret-of-at-least-16-bytes".to_vec()).unwrap())
            .build()
            .unwrap()
    }

    async fn read(mut s: crate::stream::Streamed) -> (Vec<u8>, Option<StreamError>) {
        let mut out = Vec::new();
        while let Some(e) = s.next().await {
            match e {
                Ok(e) => e.encode_into(&mut out),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    #[tokio::test(start_paused = true)]
    async fn entries_are_sealed_and_followers_read_them() {
        let clock = TokioClock::shared();
        let t = MemTransport::with_clock(clock.clone());
        let (a, b) = (instance(&t, &clock), instance(&t, &clock));
        let opens = Arc::new(AtomicUsize::new(0));
        let lead = a
            .stream_with(&question(), &none(), slow(&opens))
            .await
            .unwrap();
        let leader = tokio::spawn(read(lead));
        tokio::time::sleep(Duration::from_millis(30)).await;
        let follow = b
            .stream_with(&question(), &none(), slow(&opens))
            .await
            .unwrap();
        assert_eq!(follow.status(), Status::Coalesced);
        // What Redis holds meanwhile: no event text in clear.
        let live: Vec<_> = t
            .keys()
            .into_iter()
            .filter(|k| k.starts_with(b"p:live:"))
            .collect();
        assert_eq!(live.len(), 1);
        let (mine, err) = read(follow).await;
        let (theirs, _) = leader.await.unwrap();
        assert!(err.is_none(), "{err:?}");
        assert_eq!(mine, theirs);
        assert_eq!(opens.load(Ordering::SeqCst), 1);
        let entries = t
            .exec(Cmd::new("XRANGE").arg(&live[0][..]).arg("-").arg("+"))
            .await
            .unwrap();
        let dump = format!("{entries:?}");
        assert!(
            !dump.contains(SECRET_WORD) && !dump.contains("[DONE]"),
            "{dump}"
        );
        let stored = t
            .keys()
            .into_iter()
            .filter(|k| k.starts_with(b"p:cache:"))
            .map(|k| raw(&t, std::str::from_utf8(&k).unwrap()))
            .collect::<Vec<_>>();
        assert_eq!(stored.len(), 1);
        assert!(
            !stored[0]
                .windows(SECRET_WORD.len())
                .any(|w| w == SECRET_WORD.as_bytes())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_forged_end_entry_is_an_error_not_a_clean_end() {
        let clock = TokioClock::shared();
        let t = MemTransport::with_clock(clock.clone());
        let (a, b) = (instance(&t, &clock), instance(&t, &clock));
        let opens = Arc::new(AtomicUsize::new(0));
        let mut lead = a
            .stream_with(&question(), &none(), slow(&opens))
            .await
            .unwrap();
        // Reading drives the publication (the reader that polls drives the stream).
        lead.next().await.unwrap().unwrap();
        lead.next().await.unwrap().unwrap();
        let follower = tokio::spawn({
            let b = b.clone();
            let open = slow(&opens);
            async move { read(b.stream_with(&question(), &none(), open).await.unwrap()).await }
        });
        let live = loop {
            let live: Vec<_> = t
                .keys()
                .into_iter()
                .filter(|k| k.starts_with(b"p:live:"))
                .collect();
            if !live.is_empty() {
                break live;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        // Someone with write access to Redis appends a clear `end = done`.
        t.exec(
            Cmd::new("XADD")
                .arg(&live[0][..])
                .arg("*")
                .arg("end")
                .arg("done"),
        )
        .await
        .unwrap();
        drop(lead);
        let (_, err) = follower.await.unwrap();
        assert!(
            matches!(err, Some(StreamError::Cache(_))),
            "a forged entry ends the follower in an error: {err:?}"
        );
    }
}
