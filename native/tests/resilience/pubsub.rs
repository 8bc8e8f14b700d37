//! Pub/sub for the redis-rs transport, as these tests need it.
//!
//! `larder_native::RedisTransport` does not implement `Transport::subscribe` yet; this
//! wrapper adds it with a dedicated redis-rs `PubSub` connection per subscription (standalone
//! only). It is what `RedisTransport::subscribe` should do, ready to move there.

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use larder_core::transport::{BoxSubscription, Message, Subscription};
use larder_core::{Cmd, ErrorKind, ScanCursor, Transport, TransportError, Value};
use larder_native::RedisTransport;

/// A [`RedisTransport`] with pub/sub.
#[derive(Clone)]
pub(crate) struct PubSubRedis {
    inner: RedisTransport,
    client: redis::Client,
}

impl fmt::Debug for PubSubRedis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubRedis")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl PubSubRedis {
    pub(crate) fn new(inner: RedisTransport, url: &str) -> Self {
        PubSubRedis {
            inner,
            client: redis::Client::open(url).expect("a valid Redis URL"),
        }
    }
}

struct RedisSubscription {
    stream: redis::aio::PubSubStream,
}

impl fmt::Debug for RedisSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSubscription").finish_non_exhaustive()
    }
}

impl Subscription for RedisSubscription {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.stream.poll_next_unpin(cx).map(|m| {
            m.map(|m| {
                Message::new(
                    Bytes::copy_from_slice(m.get_channel_name().as_bytes()),
                    Bytes::copy_from_slice(m.get_payload_bytes()),
                )
            })
        })
    }
}

fn io(e: impl fmt::Display) -> TransportError {
    TransportError::new(ErrorKind::Io, format!("subscribe: {e}"))
}

#[async_trait::async_trait]
impl Transport for PubSubRedis {
    async fn exec(&self, cmd: Cmd) -> Result<Value, TransportError> {
        self.inner.exec(cmd).await
    }

    async fn pipeline(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, TransportError> {
        self.inner.pipeline(cmds).await
    }

    async fn scan_page(
        &self,
        cursor: ScanCursor,
        pattern: &[u8],
        count: usize,
    ) -> Result<(ScanCursor, Vec<Bytes>), TransportError> {
        self.inner.scan_page(cursor, pattern, count).await
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.inner.close().await
    }

    fn supports_pubsub(&self) -> bool {
        true
    }

    async fn subscribe(&self, channel: &[u8]) -> Result<BoxSubscription, TransportError> {
        let connect = async {
            let mut ps = self.client.get_async_pubsub().await.map_err(io)?;
            ps.subscribe(channel).await.map_err(io)?;
            Ok::<_, TransportError>(ps.into_on_message())
        };
        let stream = tokio::time::timeout(Duration::from_secs(1), connect)
            .await
            .map_err(|_| TransportError::new(ErrorKind::Timeout, "subscribe: no reply in 1 s"))??;
        Ok(Box::new(RedisSubscription { stream }))
    }
}
