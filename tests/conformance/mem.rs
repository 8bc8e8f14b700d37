//! The suite on the in-memory test transport (no server needed).

use std::sync::Arc;
use std::time::Duration;

use larder::testing::MemTransport;
use larder::{Clock, SharedTransport};

use crate::suite::Backend;

struct Mem {
    transport: MemTransport,
}

#[async_trait::async_trait]
impl Backend for Mem {
    fn transport(&self) -> SharedTransport {
        Arc::new(self.transport.clone())
    }

    async fn sleep(&self, d: Duration) {
        // Time on the in-memory transport is a manual clock: advancing it is instant.
        self.transport.clock().sleep(d).await;
    }
}

async fn backend() -> Mem {
    Mem {
        transport: MemTransport::new(),
    }
}

conformance_tests!(backend().await);
