//! The suite on edge → gateway → Redis: `larder-edge`'s `RestTransport` (native HTTP client)
//! talking the Upstash REST dialect to an in-process `larder gateway` in front of a real
//! standalone `redis-server`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use larder::SharedTransport;
use larder_edge::RestTransport;
use larder_native::RedisTransport;
use larder_native::gateway::{Gateway, Token};
use larder_native::testing::RedisServer;

use crate::suite::Backend;

const TOKEN: &str = "conformance-edge-token-0123456789";

struct Edge {
    transport: RestTransport,
}

#[async_trait::async_trait]
impl Backend for Edge {
    fn transport(&self) -> SharedTransport {
        Arc::new(self.transport.clone())
    }

    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

/// One Redis and one gateway for every case of this binary. The gateway runs on its own
/// thread and runtime (each test has its own runtime, which ends with the test); the
/// harness kills the server when the test process exits.
fn gateway_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    URL.get_or_init(|| {
        let redis_url = SERVER
            .get_or_init(|| RedisServer::start().expect("start redis-server"))
            .url();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("edge-gateway".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("gateway runtime");
                runtime.block_on(async move {
                    let native = RedisTransport::connect(&redis_url)
                        .await
                        .expect("connect the gateway to redis-server");
                    let gateway = Gateway::builder(Arc::new(native))
                        .token(Token::new(TOKEN).expect("long token"))
                        // The suite stores a 1 MiB binary value: 1.4 MB of base64 JSON.
                        .body_limit(8 * 1024 * 1024)
                        .build()
                        .expect("gateway");
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind a free port");
                    let addr = listener.local_addr().expect("local addr");
                    tx.send(format!("http://{addr}")).expect("report the URL");
                    let _ = gateway.serve(listener, std::future::pending()).await;
                });
            })
            .expect("spawn the gateway thread");
        rx.recv().expect("the gateway starts")
    })
}

async fn backend() -> Edge {
    let url = tokio::task::spawn_blocking(gateway_url)
        .await
        .expect("harness thread");
    // Each case gets its own transport, so `close` in one case disturbs no other.
    let transport = RestTransport::builder(url, TOKEN)
        .base64_args(true)
        .build()
        .expect("edge transport");
    Edge { transport }
}

conformance_tests!(backend().await);
