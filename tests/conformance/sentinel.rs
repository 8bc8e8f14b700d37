//! The suite on a real Sentinel setup (master, replica, three sentinels, started once for
//! this test binary by the `larder_native::testing` harness): the transport finds the master
//! through the sentinels.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use larder::SharedTransport;
use larder_native::testing::SentinelSetup;
use larder_native::{RedisOptions, RedisTransport};

use crate::suite::Backend;

struct Sentinel {
    transport: RedisTransport,
}

#[async_trait::async_trait]
impl Backend for Sentinel {
    fn transport(&self) -> SharedTransport {
        Arc::new(self.transport.clone())
    }

    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

fn setup() -> &'static SentinelSetup {
    static SETUP: OnceLock<SentinelSetup> = OnceLock::new();
    SETUP.get_or_init(|| SentinelSetup::start().expect("start the sentinel setup"))
}

async fn backend() -> Sentinel {
    let (name, sentinels) = tokio::task::spawn_blocking(|| {
        let s = setup();
        (s.master_name().to_owned(), s.sentinel_addrs())
    })
    .await
    .expect("harness thread");
    let transport = RedisTransport::from_options(&RedisOptions::sentinel(name, sentinels))
        .await
        .expect("connect through the sentinels");
    Sentinel { transport }
}

conformance_tests!(backend().await);
