//! `RedisCache` over the edge transport, through the gateway: one HTTP request per
//! operation, and entries shared with native caches (standalone and Cluster).

use std::sync::Arc;

use bytes::Bytes;
use larder_core::{Cache, RedisCache, request_hash};
use larder_edge::RestTransport;
use larder_native::RedisTransport;
use larder_native::gateway::{Gateway, Token};
use larder_native::testing::RedisCluster;

use crate::support::{FULL, Setup};

#[tokio::test]
async fn every_cache_operation_is_one_http_request() {
    let s = Setup::start().await;
    let edge = s.edge();
    let cache = RedisCache::builder(edge.clone())
        .prefix("onereq")
        .build()
        .unwrap();
    let mut last = edge.requests();
    let mut step = |what: &str| {
        let now = edge.requests();
        assert_eq!(now - last, 1, "{what} took {} requests", now - last);
        last = now;
    };
    cache.set("a", "1".into(), None).await.unwrap();
    step("set");
    assert_eq!(cache.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
    step("get (hit)");
    assert_eq!(cache.get("b").await.unwrap(), None);
    step("get (miss)");
    cache.mget(&["a", "b", "c"]).await.unwrap();
    step("mget");
    cache
        .mset(&[("x", "1".into()), ("y", "2".into())], None)
        .await
        .unwrap();
    step("mset (with stats)");
    assert!(cache.exists("x").await.unwrap());
    step("exists");
    assert!(cache.delete("x").await.unwrap());
    step("delete");
    let stats = cache.stats().await.unwrap();
    step("stats (flush + read shared totals)");
    assert_eq!(stats.shared.unwrap().writes, 3);
}

async fn cross_read(native: RedisTransport, edge: RestTransport) {
    let native = RedisCache::builder(native)
        .prefix("shared")
        .build()
        .unwrap();
    let edge = RedisCache::builder(edge).prefix("shared").build().unwrap();
    let request = serde_json::json!({"model": "gpt-4o-mini", "prompt": "Hi", "temperature": 0.7});
    let key = request_hash(&request).unwrap();
    native.set(&key, "from native".into(), None).await.unwrap();
    assert_eq!(
        edge.get(&key).await.unwrap().as_deref(),
        Some(&b"from native"[..])
    );
    let binary = Bytes::from((0..=255u8).rev().collect::<Vec<_>>());
    edge.set("from-edge", binary.clone(), None).await.unwrap();
    assert_eq!(native.get("from-edge").await.unwrap(), Some(binary));
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let entries: Vec<(&str, Bytes)> = refs
        .iter()
        .map(|k| (*k, Bytes::from(k.to_string())))
        .collect();
    edge.mset(&entries, None).await.unwrap();
    let got = native.mget(&refs).await.unwrap();
    assert!(
        got.iter()
            .zip(&refs)
            .all(|(v, k)| v.as_deref() == Some(k.as_bytes()))
    );
    assert_eq!(edge.delete_pattern("k*").await.unwrap(), 20);
    assert!(
        native
            .mget(&refs)
            .await
            .unwrap()
            .iter()
            .all(Option::is_none)
    );
}

#[tokio::test]
async fn native_and_edge_caches_read_each_others_entries() {
    let s = Setup::start().await;
    cross_read(s.native.clone(), s.edge()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_and_edge_share_entries_on_a_cluster() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start_default)
        .await
        .unwrap()
        .expect("cluster starts");
    let native = RedisTransport::connect(&cluster.seed_urls().join(","))
        .await
        .expect("cluster transport");
    let gateway = Gateway::builder(Arc::new(native.clone()))
        .token(Token::new(FULL).unwrap())
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = gateway.spawn(listener).unwrap();
    let edge = RestTransport::builder(gateway.url(), FULL)
        .base64_args(true)
        .build()
        .unwrap();
    cross_read(native, edge).await;
}
