//! The suite on a real Redis Cluster (3 masters, 3 replicas, started once for this test
//! binary by the `larder_native::testing` harness), through the redis-rs transport: keys of
//! one case land on every master, so multi-key commands, pipelines and scans cross slots.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use larder::SharedTransport;
use larder_native::testing::RedisCluster;
use larder_native::{RedisOptions, RedisTransport};

use crate::suite::Backend;

struct Cluster {
    transport: RedisTransport,
}

#[async_trait::async_trait]
impl Backend for Cluster {
    fn transport(&self) -> SharedTransport {
        Arc::new(self.transport.clone())
    }

    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start_default().expect("start the redis cluster"))
}

async fn backend() -> Cluster {
    let seeds = tokio::task::spawn_blocking(|| cluster().seed_urls())
        .await
        .expect("harness thread");
    let transport = RedisTransport::from_options(&RedisOptions::cluster(seeds))
        .await
        .expect("connect to the cluster");
    Cluster { transport }
}

conformance_tests!(backend().await);
