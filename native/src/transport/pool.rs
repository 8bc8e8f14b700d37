//! A pool of `pool_size` multiplexed connections to one server, used round-robin, each of
//! which reconnects by itself.
//!
//! [`Conn`] is larder's own reconnecting wrapper around redis-rs's `MultiplexedConnection`
//! (it replaced redis-rs's `ConnectionManager`, which costs an extra shared-future poll per
//! call and needs a second timer around every call to bound its reconnects). What it
//! guarantees:
//!
//! - **Bounded.** Getting a connection takes at most `dial_timeout` (redis-rs's connection
//!   timeout, and larder's own timer around it); a command or pipeline then takes at most
//!   `write_timeout + read_timeout` (redis-rs's response timeout, which covers queueing,
//!   writing and reading). So a call never exceeds the call budget, with no extra timer on
//!   the path of a call over an open connection.
//! - **Reconnects by itself.** A call that finds the connection broken (reset, refused,
//!   closed, a protocol error) or gets no reply in time fails, and a new connection starts
//!   opening in the background at once; calls arriving meanwhile wait for it (within
//!   `dial_timeout`). A connection that died silently (its socket still open) is thus
//!   replaced after one timed-out call.
//! - **Fails fast while Redis is down.** After a failed connect, calls within
//!   [`RETRY_AFTER`] fail at once with that error instead of dialling again; the first call
//!   after it dials again. Concurrent callers share one attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, try_join_all};
use larder_core::{Cmd, TransportError, Value};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};

use super::convert::{
    deadline_error, replies, reply, to_redis_cmd, to_redis_pipeline, transport_error,
};
use crate::options::Settings;

/// After a failed connect, how long calls fail with that error before one dials again.
pub(crate) const RETRY_AFTER: Duration = Duration::from_millis(25);

/// A connect attempt that every waiting caller shares.
type Connecting = Shared<BoxFuture<'static, Result<MultiplexedConnection, RedisError>>>;

/// Where a [`Conn`] is.
enum State {
    /// No connection. `last` is the failure of the last attempt (`None` before the first).
    Down { last: Option<(RedisError, Instant)> },
    /// Attempt `epoch` is under way.
    Connecting { epoch: u64, attempt: Connecting },
    /// Connection `epoch` is open.
    Ready {
        epoch: u64,
        conn: MultiplexedConnection,
    },
}

struct ConnInner {
    client: redis::Client,
    config: AsyncConnectionConfig,
    dial: Duration,
    state: ArcSwap<State>,
    epochs: AtomicU64,
}

/// One multiplexed connection that reconnects by itself (see the module docs).
#[derive(Clone)]
pub(crate) struct Conn {
    inner: Arc<ConnInner>,
}

impl Conn {
    fn new(client: redis::Client, s: &Settings) -> Conn {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(s.dial_timeout))
            .set_response_timeout(Some(s.response_timeout()));
        Conn {
            inner: Arc::new(ConnInner {
                client,
                config,
                dial: s.dial_timeout,
                state: ArcSwap::from_pointee(State::Down { last: None }),
                epochs: AtomicU64::new(0),
            }),
        }
    }

    /// The open connection and its epoch, opening one when there is none (within
    /// `dial_timeout`).
    async fn get(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        let (epoch, attempt) = loop {
            let current = self.inner.state.load();
            match &**current {
                State::Ready { epoch, conn } => return Ok((*epoch, conn.clone())),
                State::Connecting { epoch, attempt } => break (*epoch, attempt.clone()),
                State::Down {
                    last: Some((error, at)),
                } if at.elapsed() < RETRY_AFTER => return Err(error.clone()),
                State::Down { .. } => {
                    if let Some(started) = self.start(&current) {
                        break started;
                    }
                    // Another caller changed the state first: look again.
                }
            }
        };
        match tokio::time::timeout(self.inner.dial, attempt).await {
            Ok(Ok(conn)) => Ok((epoch, conn)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within dial_timeout ({:?})", self.inner.dial),
            ))),
        }
    }

    /// Starts a connect attempt if the state is still `seen`; returns it and its epoch.
    /// The attempt runs as its own task, so it completes (and records its outcome) even when
    /// every caller waiting on it gives up.
    fn start(&self, seen: &Guard<Arc<State>>) -> Option<(u64, Connecting)> {
        let epoch = self.inner.epochs.fetch_add(1, Ordering::Relaxed) + 1;
        let weak = Arc::downgrade(&self.inner);
        let client = self.inner.client.clone();
        let config = self.inner.config.clone();
        let attempt: Connecting = async move {
            let result = client
                .get_multiplexed_async_connection_with_config(&config)
                .await;
            if let Some(inner) = weak.upgrade() {
                let next = match &result {
                    Ok(conn) => State::Ready {
                        epoch,
                        conn: conn.clone(),
                    },
                    Err(e) => State::Down {
                        last: Some((e.clone(), Instant::now())),
                    },
                };
                let next = Arc::new(next);
                inner.state.rcu(|cur| match &**cur {
                    State::Connecting { epoch: g, .. } if *g == epoch => next.clone(),
                    _ => cur.clone(),
                });
            }
            result
        }
        .boxed()
        .shared();
        let installed = Arc::new(State::Connecting {
            epoch,
            attempt: attempt.clone(),
        });
        let prev = self.inner.state.compare_and_swap(seen, installed);
        if !Arc::ptr_eq(&prev, seen) {
            return None;
        }
        tokio::spawn(attempt.clone().map(drop));
        Some((epoch, attempt))
    }

    /// A call on connection `epoch` failed with `e`: when the error says the connection is
    /// broken — or may be: a reply that did not come in time — replace it (in the
    /// background, at once).
    ///
    /// Replacing after a timeout matters for connections that die silently: a NAT or load
    /// balancer that forgets an idle flow, a partition. The socket stays open and every
    /// command on it would time out until TCP gives up (minutes). Replacing is harmless when
    /// the server was merely slow: commands in flight on the old connection still finish
    /// (it closes when the last of them drops it), new ones go to the new connection.
    fn failed(&self, epoch: u64, e: &RedisError) {
        if !e.is_unrecoverable_error() && !e.is_timeout() {
            return;
        }
        let current = self.inner.state.load();
        if matches!(&**current, State::Ready { epoch: g, .. } if *g == epoch) {
            self.start(&current);
        }
    }

    /// Runs one command.
    async fn exec(&self, cmd: &redis::Cmd) -> Result<redis::Value, RedisError> {
        let (epoch, mut conn) = self.get().await?;
        let result = conn.send_packed_command(cmd).await;
        if let Err(e) = &result {
            self.failed(epoch, e);
        }
        result
    }

    /// Runs a pipeline of `count` commands.
    async fn pipeline(
        &self,
        pipe: &redis::Pipeline,
        count: usize,
    ) -> Result<Vec<redis::Value>, RedisError> {
        let (epoch, mut conn) = self.get().await?;
        let result = conn.send_packed_commands(pipe, 0, count).await;
        if let Err(e) = &result {
            self.failed(epoch, e);
        }
        result
    }
}

/// Round-robin connections to one server.
pub(crate) struct Pool {
    conns: Vec<Conn>,
    next: AtomicUsize,
    /// `host:port` (no credentials), for messages.
    label: String,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("server", &self.label)
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl Pool {
    /// A pool whose connections all open on first use (never touches the network here).
    pub(crate) fn lazy(info: redis::ConnectionInfo, s: &Settings) -> Result<Pool, TransportError> {
        let label = info.addr().to_string();
        let client = s
            .client(info)
            .map_err(|e| transport_error(&e, &format!("connecting to {label}")))?;
        let conns = (0..s.pool_size.max(1))
            .map(|_| Conn::new(client.clone(), s))
            .collect();
        Ok(Pool {
            conns,
            next: AtomicUsize::new(0),
            label,
        })
    }

    /// A pool with `min_idle_conns` connections opened (and answering `PING`) before it is
    /// returned, within the call budget.
    pub(crate) async fn connect(
        info: redis::ConnectionInfo,
        s: &Settings,
    ) -> Result<Pool, TransportError> {
        let pool = Pool::lazy(info, s)?;
        pool.warm(s.min_idle_conns, s.call_budget()).await?;
        Ok(pool)
    }

    /// Opens the first `n` connections.
    pub(crate) async fn warm(&self, n: usize, budget: Duration) -> Result<(), TransportError> {
        let n = n.min(self.conns.len());
        if n == 0 {
            return Ok(());
        }
        let ping = redis::cmd("PING");
        let opened = try_join_all(self.conns[..n].iter().map(|c| c.exec(&ping)));
        match tokio::time::timeout(budget, opened).await {
            Ok(Ok(replies)) => match replies.into_iter().find_map(|r| match r {
                redis::Value::ServerError(e) => Some(e),
                _ => None,
            }) {
                // `PING` refused: no or wrong credentials (`NOAUTH`), or a server not ready.
                Some(e) => Err(transport_error(
                    &redis::RedisError::from(e),
                    &format!("connecting to {}", self.label),
                )),
                None => Ok(()),
            },
            Ok(Err(e)) => Err(transport_error(
                &e,
                &format!("connecting to {}", self.label),
            )),
            Err(_) => Err(deadline_error(
                &format!("connecting to {}", self.label),
                budget,
            )),
        }
    }

    fn pick(&self) -> &Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        &self.conns[i]
    }

    /// Runs one command. Bounded by itself (see the module docs).
    pub(crate) async fn exec(&self, cmd: &Cmd) -> Result<Value, TransportError> {
        let result = self.pick().exec(&to_redis_cmd(cmd)).await;
        reply(result, || cmd.name())
    }

    /// Runs a pipeline in one round trip. Bounded by itself (see the module docs).
    pub(crate) async fn pipeline(&self, cmds: &[Cmd]) -> Result<Vec<Value>, TransportError> {
        let pipe = to_redis_pipeline(cmds);
        let result = self.pick().pipeline(&pipe, cmds.len()).await;
        replies(result, cmds.len(), || "pipeline".into())
    }
}
