//! Caching LLM responses in Redis: simple, options, cluster, sentinel, warming and
//! invalidation (pattern, namespace, tag), then the analytics every instance shares.
//!
//! Run with `cargo run --example cache_redis`.
//!
//! It uses `REDIS_URL` (and `REDIS_CLUSTER_URLS` / `REDIS_SENTINELS` with
//! `REDIS_SENTINEL_MASTER` for those sections). Whatever is not set is started for the demo
//! on free ports with larder's test harness when `redis-server` is installed, and stopped at
//! the end; in a service you pass your own URLs.

use std::time::{Duration, Instant};

use larder::native::{RedisOptions, RedisTransport};
use larder::response::{
    CacheControl, LlmRequest, LlmResponse, ModelPrice, Prices, ResponseCache, Usage, WarmOptions,
    WarmProgress,
};
use larder::{Cache, RedisCache};
use larder_native::testing::{RedisCluster, RedisServer, SentinelSetup};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A stand-in for the model: slow, deterministic, reports token usage.
async fn fake_model(request: LlmRequest) -> Result<LlmResponse, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(150)).await;
    let question = request.prompt_text().unwrap_or_default().to_owned();
    Ok(LlmResponse::new(format!("An answer to {question:?}"))
        .with_model(request.model())
        .with_usage(Usage::new(40, 25)))
}

fn has_redis_server() -> bool {
    std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn start<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, Error> {
    println!("   (starting a throwaway {what} for the demo)");
    Ok(tokio::task::spawn_blocking(f).await??)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if std::env::var("REDIS_URL").is_err() && !has_redis_server() {
        println!("Set REDIS_URL (or install redis-server) to run this example.");
        return Ok(());
    }
    let mut keep_alive: Vec<Box<dyn std::any::Any + Send>> = Vec::new();

    // 1. Simple: one URL.
    println!("1. simple");
    let url = match std::env::var("REDIS_URL") {
        Ok(url) => url,
        Err(_) => {
            let server = start("redis-server", RedisServer::start).await?;
            let url = server.url();
            keep_alive.push(Box::new(server));
            url
        }
    };
    let redis = RedisCache::builder(RedisTransport::connect(&url).await?).build()?;
    let prices = Prices::new().price("gpt-4o-mini", ModelPrice::per_million(0.15, 0.60));
    let cache = ResponseCache::redis(redis)
        .default_ttl(Duration::from_secs(3600))
        .prices(prices)
        .build()?;
    let question = LlmRequest::chat("gpt-4o-mini")
        .system("You are terse.")
        .user("What is the capital of France?")
        .temperature(0.0);
    let control = CacheControl::default();
    for _ in 0..2 {
        let t = Instant::now();
        let answer = cache
            .try_get_with(&question, &control, || fake_model(question.clone()))
            .await?;
        println!(
            "   {} in {:>6.1} ms: {:?}",
            answer.status,
            t.elapsed().as_secs_f64() * 1000.0,
            answer.text()
        );
    }
    println!("   key: {}", cache.key(&question, &control)?);

    // 2. Options: how to reach Redis on the transport, the cache's prefix and TTL on its
    // builder.
    println!("2. options");
    let opts = RedisOptions::standalone(url.clone())
        .read_timeout(Duration::from_millis(500))
        .write_timeout(Duration::from_millis(500));
    let myapp = RedisCache::builder(RedisTransport::from_options(&opts).await?)
        .prefix("myapp")
        .default_ttl(Duration::from_secs(600))
        .build()?;
    myapp.set("greeting", "hello".into(), None).await?;
    println!(
        "   myapp:cache:greeting = {:?}, ttl {:?}",
        myapp
            .get("greeting")
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        myapp.ttl("greeting").await?
    );

    // 3. Cluster: several seed URLs.
    println!("3. cluster");
    let seeds: Vec<String> = match std::env::var("REDIS_CLUSTER_URLS") {
        Ok(urls) => urls.split(',').map(str::to_owned).collect(),
        Err(_) if has_redis_server() => {
            let cluster = start("3-master Redis Cluster", RedisCluster::start_default).await?;
            let seeds = cluster.seed_urls();
            keep_alive.push(Box::new(cluster));
            seeds
        }
        Err(_) => Vec::new(),
    };
    if seeds.is_empty() {
        println!("   skipped: set REDIS_CLUSTER_URLS");
    } else {
        let transport = RedisTransport::from_options(&RedisOptions::cluster(seeds)).await?;
        let clustered = ResponseCache::redis(RedisCache::builder(transport).build()?).build()?;
        for i in 0..30 {
            let r = LlmRequest::prompt("gpt-4o-mini", format!("cluster question {i}"));
            clustered
                .put(&r, &CacheControl::default(), &LlmResponse::new("answer"))
                .await?;
        }
        // Pattern invalidation scans every master, so it finds all 30 keys.
        println!(
            "   30 answers across the slots; purge(\"*\") deleted {}",
            clustered.purge_pattern("*").await?
        );
    }

    // 4. Sentinel: the master by name, followed across failovers.
    println!("4. sentinel");
    let sentinel = match std::env::var("REDIS_SENTINELS") {
        Ok(addrs) => Some((
            std::env::var("REDIS_SENTINEL_MASTER").unwrap_or_else(|_| "mymaster".into()),
            addrs.split(',').map(str::to_owned).collect::<Vec<_>>(),
        )),
        Err(_) if has_redis_server() => {
            let setup = start("master + replica + 3 sentinels", SentinelSetup::start).await?;
            let found = (setup.master_name().to_owned(), setup.sentinel_addrs());
            keep_alive.push(Box::new(setup));
            Some(found)
        }
        Err(_) => None,
    };
    match sentinel {
        Some((master, addrs)) => {
            let transport =
                RedisTransport::from_options(&RedisOptions::sentinel(master, addrs)).await?;
            let via_sentinel = RedisCache::builder(transport).build()?;
            via_sentinel
                .set("k", "through the sentinel-resolved master".into(), None)
                .await?;
            println!(
                "   {:?}",
                via_sentinel
                    .get("k")
                    .await?
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            );
        }
        None => println!("   skipped: set REDIS_SENTINELS"),
    }

    // 5. Warming: the FAQ before traffic arrives, 4 model calls at a time.
    println!("5. warming");
    let faq: Vec<LlmRequest> = (1..=12)
        .map(|i| LlmRequest::chat("gpt-4o-mini").user(format!("FAQ question #{i}")))
        .collect();
    let t = Instant::now();
    let report = cache
        .warm(
            faq.clone(),
            fake_model,
            WarmOptions::new()
                .concurrency(4)
                .control(CacheControl::default().namespace("faq").tag("faq-v1"))
                .on_progress(|p: &WarmProgress| {
                    if p.done.is_multiple_of(4) {
                        println!("   {}/{} done", p.done, p.total);
                    }
                }),
        )
        .await;
    println!(
        "   computed {} in {:.2} s (sequentially ~{:.2} s)",
        report.progress.computed,
        t.elapsed().as_secs_f64(),
        faq.len() as f64 * 0.15
    );

    // 6. Invalidation: by tag (lazy), by namespace (O(1)), by key pattern (SCAN).
    println!("6. invalidation");
    let faq_ctl = CacheControl::default().namespace("faq").tag("faq-v1");
    let hit = cache.get(&faq[0], &faq_ctl).await?;
    println!(
        "   before: {}",
        hit.map_or("miss".into(), |a| a.status.to_string())
    );
    tokio::time::sleep(Duration::from_millis(2)).await;
    cache.invalidate_tag("faq-v1").await?;
    tokio::time::sleep(Duration::from_millis(2)).await;
    println!(
        "   after invalidate_tag: {}",
        if cache.get(&faq[0], &faq_ctl).await?.is_some() {
            "hit"
        } else {
            "miss"
        }
    );
    cache
        .warm(
            faq.clone(),
            fake_model,
            WarmOptions::new().concurrency(4).control(faq_ctl.clone()),
        )
        .await;
    let generation = cache.invalidate_namespace("faq").await?;
    println!(
        "   invalidate_namespace(\"faq\") -> generation {generation}: {}",
        if cache.get(&faq[1], &faq_ctl).await?.is_some() {
            "hit"
        } else {
            "miss"
        }
    );
    println!(
        "   purge_pattern(\"faq:*\") deleted {} keys",
        cache.purge_pattern("faq:*").await?
    );

    // 7. Analytics: stored in Redis, every instance adds to them.
    let report = cache.analytics().await?;
    let total = report.total();
    println!(
        "7. analytics: {} hits, {} misses ({:.0}% hit rate), {} tokens and ${:.6} saved",
        total.hits,
        total.misses,
        total.hit_rate() * 100.0,
        total.tokens_saved(),
        total.cost_saved_usd
    );
    cache.purge_pattern("*").await?;
    drop(keep_alive);
    Ok(())
}
