//! `POST /subscribe/{channel}` and `/psubscribe/{pattern}`: server-sent events of Redis
//! pub/sub, raw (the frames the official client parses) and through `RestTransport`.

use std::time::Duration;

use futures_util::StreamExt;
use larder_core::transport::next_message;
use larder_core::{Cmd, Transport};
use larder_native::gateway::Policy;

use crate::support::{FULL, READ_ONLY, Setup};

/// An open event stream and what has been read of it.
struct Sse {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    text: String,
}

impl Sse {
    async fn open(s: &Setup, token: &str, path: &str, base64: bool) -> Result<Sse, (u16, String)> {
        let mut req = s
            .http
            .post(format!("{}{path}", s.gateway.url()))
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .body("[]");
        if base64 {
            req = req.header("larder-pubsub-encoding", "base64");
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        if status != 200 {
            return Err((status, resp.text().await.unwrap()));
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert!(resp.headers().contains_key("upstash-sync-token"));
        Ok(Sse {
            body: resp.bytes_stream().boxed(),
            text: String::new(),
        })
    }

    /// The `data:` lines of the next `n` events (comments skipped).
    async fn events(&mut self, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        loop {
            while out.len() < n
                && let Some(end) = self.text.find("\n\n")
            {
                let event: String = self.text.drain(..end + 2).collect();
                if let Some(data) = event.strip_prefix("data: ") {
                    out.push(data.trim_end().to_owned());
                }
            }
            if out.len() == n {
                return out;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("{n} events within 5 s; have {out:?} {:?}", self.text))
                .expect("the stream is open")
                .unwrap();
            self.text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Whether the stream ends within `within`.
    async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

async fn publish(s: &Setup, channel: &str, payload: &str) -> i64 {
    let (status, _, body) = s
        .post(
            "/",
            &serde_json::json!(["PUBLISH", channel, payload]).to_string(),
            false,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["result"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_and_patterns_stream_the_frames_the_official_client_reads() {
    let s = Setup::start().await;
    let mut chat = Sse::open(&s, FULL, "/subscribe/chat", false).await.unwrap();
    assert_eq!(chat.events(1).await, ["subscribe,chat,1"]);
    // Read-only tokens may subscribe: it writes nothing.
    let mut users = Sse::open(&s, READ_ONLY, "/psubscribe/user:*", false)
        .await
        .unwrap();
    assert_eq!(users.events(1).await, ["psubscribe,user:*,1"]);

    assert_eq!(
        publish(&s, "chat", r#"{"user":"a","text":"hi, there"}"#).await,
        1
    );
    assert_eq!(publish(&s, "user:42", r#"{"id":1}"#).await, 1);
    assert_eq!(publish(&s, "nobody", "x").await, 0);
    assert_eq!(
        chat.events(1).await,
        [r#"message,chat,{"user":"a","text":"hi, there"}"#]
    );
    assert_eq!(
        users.events(1).await,
        [r#"pmessage,user:*,user:42,{"id":1}"#]
    );

    // larder's base64 frames carry any bytes, commas and line ends in names included.
    let mut odd = Sse::open(&s, FULL, "/subscribe/a%2Cb%2Fc", true)
        .await
        .unwrap();
    assert_eq!(odd.events(1).await, ["subscribe,YSxiL2M=,1"]);
    assert_eq!(publish(&s, "a,b/c", "line\nend").await, 1);
    assert_eq!(odd.events(1).await, ["message,YSxiL2M=,bGluZQplbmQ="]);

    // One Redis subscription serves every stream of a channel.
    let mut chat2 = Sse::open(&s, FULL, "/subscribe/chat", false).await.unwrap();
    chat2.events(1).await;
    assert_eq!(s.native.pubsub_status().channels, 3);
    let stats = s
        .native
        .exec(Cmd::new("INFO").arg("commandstats"))
        .await
        .unwrap();
    let stats = String::from_utf8_lossy(stats.as_bytes().unwrap()).into_owned();
    assert!(
        stats.contains("cmdstat_subscribe:calls=2,"),
        "chat and a,b/c subscribed once each: {stats}"
    );
    assert_eq!(
        s.metric("larder_gateway_open_subscriptions", &[]).await,
        4.0
    );

    // A client that goes away is unsubscribed.
    drop(chat);
    drop(chat2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.native.pubsub_status().channels != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "chat unsubscribed after both left"
        );
        // The gateway notices a closed connection when it writes to it.
        publish(&s, "chat", "anyone?").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.metric("larder_gateway_open_subscriptions", &[]).await,
        2.0
    );
}

#[tokio::test]
async fn subscriptions_are_admitted_like_commands() {
    let s = Setup::start_with(|b| {
        let mut policy = Policy::default();
        policy.deny("PSUBSCRIBE");
        b.policy(policy).max_subscriptions(2)
    })
    .await;
    let refused = |r: Result<Sse, (u16, String)>| r.err().expect("refused");

    let (status, body) =
        refused(Sse::open(&s, "wrong-token-0123456789", "/subscribe/c", false).await);
    assert_eq!(status, 401, "{body}");
    let (status, body) = refused(Sse::open(&s, FULL, "/psubscribe/c*", false).await);
    assert_eq!(
        (status, body.contains("NOPERM 'psubscribe' is denied")),
        (400, true),
        "{body}"
    );
    let (status, body) = refused(Sse::open(&s, FULL, "/subscribe/", false).await);
    assert_eq!(status, 404, "{body}");

    let _a = Sse::open(&s, FULL, "/subscribe/a", false).await.unwrap();
    let _b = Sse::open(&s, FULL, "/subscribe/b", false).await.unwrap();
    let (status, body) = refused(Sse::open(&s, FULL, "/subscribe/c", false).await);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("at most 2 subscriptions"), "{body}");
    let resp = s
        .http
        .get(format!("{}/subscribe/a", s.gateway.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn costly_patterns_are_refused() {
    let s = Setup::start().await;
    let stars = format!("/psubscribe/{}", "*a".repeat(5));
    let (status, body) = Sse::open(&s, FULL, &stars, false)
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 400);
    assert!(body.contains("at most 4 wildcards"), "{body}");
    let long = format!("/psubscribe/{}*", "a".repeat(100));
    assert_eq!(
        Sse::open(&s, FULL, &long, false)
            .await
            .err()
            .expect("refused")
            .0,
        400
    );
    assert!(
        Sse::open(&s, FULL, "/psubscribe/p:events:*", false)
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_streams_and_completes() {
    let s = Setup::start().await;
    let mut sse = Sse::open(&s, FULL, "/subscribe/c", false).await.unwrap();
    sse.events(1).await;
    let stopping = tokio::spawn(s.gateway.shutdown());
    assert!(
        sse.ends_within(Duration::from_secs(5)).await,
        "the stream ends"
    );
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("shutdown completes")
        .unwrap()
        .unwrap();
}

async fn within(
    sub: &mut larder_core::transport::BoxSubscription,
) -> larder_core::transport::Message {
    tokio::time::timeout(Duration::from_secs(5), next_message(sub))
        .await
        .expect("arrives")
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_transport_subscribes_through_the_gateway() {
    let s = Setup::start().await;
    let edge = s.edge();
    assert!(edge.supports_pubsub());
    let mut sub = edge.subscribe(b"p:events:lock").await.unwrap();
    let mut psub = edge.psubscribe(b"p:live:*").await.unwrap();
    edge.exec(
        Cmd::new("PUBLISH")
            .arg("p:events:lock")
            .arg(&b"key\x00\xff"[..]),
    )
    .await
    .unwrap();
    edge.exec(Cmd::new("PUBLISH").arg("p:live:u:t").arg("batch"))
        .await
        .unwrap();
    let m = within(&mut sub).await;
    assert_eq!(
        (&m.channel[..], &m.payload[..]),
        (&b"p:events:lock"[..], &b"key\x00\xff"[..])
    );
    let m = within(&mut psub).await;
    assert_eq!(
        (&m.channel[..], &m.payload[..]),
        (&b"p:live:u:t"[..], &b"batch"[..])
    );
    // The subscription ends when the gateway goes away (subscribe again, or poll).
    s.gateway.shutdown().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), next_message(&mut sub))
        .await
        .expect("ends");
    assert!(ended.is_none());
}
