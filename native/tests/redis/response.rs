//! The response cache's stampede protection against real Redis: two instances (each with
//! its own connections, as two processes would have) and many concurrent misses of one
//! request make one model call; the lease key is gone afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use larder_core::Status;
use larder_core::response::{CacheControl, LlmRequest, LlmResponse, ResponseCache};
use larder_native::RedisOptions;
use larder_native::testing::{RedisCluster, RedisServer};

use crate::common::blocking;

async fn one_model_call_for_many_misses(opts: impl Fn() -> RedisOptions) {
    let mut instances = Vec::new();
    for _ in 0..2 {
        let redis = crate::common::cache_with(&opts(), "resp")
            .await
            .expect("connect");
        instances.push(ResponseCache::redis(redis).build().unwrap());
    }
    let request = LlmRequest::chat("gpt-4o-mini").user("What is the capital of France?");
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let cache = instances[i % 2].clone();
        let request = request.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .try_get_with(&request, &CacheControl::default(), || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::io::Error>(LlmResponse::new("Paris."))
                })
                .await
        }));
    }
    let mut misses = 0;
    for task in tasks {
        let answer = task.await.expect("task").expect("answer");
        assert_eq!(answer.text(), "Paris.");
        match answer.status {
            Status::Miss => misses += 1,
            Status::Coalesced => {}
            other => panic!("{other}: every caller but the one that computed joined it"),
        }
    }
    assert_eq!(misses, 1, "one caller computed; the others are COALESCED");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one model call for 40 concurrent misses in two instances"
    );
    let key = instances[0]
        .key(&request, &CacheControl::default())
        .expect("key");
    let lock = key.replacen(":cache:", ":lock:", 1);
    let redis = crate::common::cache_with(&opts(), "larder")
        .await
        .expect("connect");
    use larder_core::Cache;
    assert!(
        redis.get(&lock).await.expect("GET").is_none(),
        "the lease {lock} was released"
    );
    let hit = instances[1]
        .try_get_with(&request, &CacheControl::default(), || async {
            Err::<LlmResponse, _>(std::io::Error::other("not called"))
        })
        .await
        .expect("hit");
    assert_eq!(hit.status, Status::Hit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_cache_misses_make_one_model_call_standalone() {
    let server = blocking(RedisServer::start).await.expect("start redis");
    let addr = server.addr();
    one_model_call_for_many_misses(|| RedisOptions::standalone(&addr)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_cache_misses_make_one_model_call_cluster() {
    let cluster = blocking(RedisCluster::start_default)
        .await
        .expect("start cluster");
    let addrs = cluster.seed_urls();
    one_model_call_for_many_misses(|| RedisOptions::cluster(addrs.clone())).await;
}
