//! The suite on a real standalone `redis-server` (started once for this test binary by the
//! `larder_native::testing` harness), through the redis-rs transport.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use larder::SharedTransport;
use larder_native::RedisTransport;
use larder_native::testing::RedisServer;

use crate::suite::Backend;

struct Standalone {
    transport: RedisTransport,
}

#[async_trait::async_trait]
impl Backend for Standalone {
    fn transport(&self) -> SharedTransport {
        Arc::new(self.transport.clone())
    }

    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

/// One server for every case of this binary (cases use unique prefixes). The harness kills
/// it when the test process exits.
fn server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start().expect("start redis-server"))
}

async fn backend() -> Standalone {
    let url = tokio::task::spawn_blocking(|| server().url())
        .await
        .expect("harness thread");
    // Each case gets its own transport, so `close` in one case disturbs no other.
    let transport = RedisTransport::connect(&url)
        .await
        .expect("connect to the standalone server");
    Standalone { transport }
}

conformance_tests!(backend().await);
