//! A pool of `pool_size` redis-rs [`ConnectionManager`]s to one server, used round-robin.
//!
//! Each manager is one multiplexed connection that reconnects by itself. Its reconnect policy
//! is tuned so that a call made while the server is down fails within milliseconds (one quick
//! retry) instead of redis-rs's default six retries (~9.4 s measured), and its connect and
//! response timeouts come from the options.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::try_join_all;
use larder_core::{Cmd, TransportError, Value};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::convert::{
    deadline_error, replies, reply, to_redis_cmd, to_redis_pipeline, transport_error,
};
use crate::options::Settings;

/// Shortest wait before the one reconnect retry.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(25);
/// Longest wait before a reconnect retry.
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(250);
/// Reconnect retries after a failed attempt (redis-rs default: 6, ~9.4 s in total).
const RECONNECT_RETRIES: usize = 1;

/// The `ConnectionManagerConfig` larder uses (see the module docs).
pub(crate) fn manager_config(s: &Settings) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_min_delay(RECONNECT_MIN_DELAY)
        .set_max_delay(RECONNECT_MAX_DELAY)
        .set_exponent_base(2.0)
        .set_connection_timeout(Some(s.dial_timeout))
        .set_response_timeout(Some(s.response_timeout()))
}

/// Round-robin connection managers to one server.
pub(crate) struct Pool {
    conns: Vec<ConnectionManager>,
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
        let client = redis::Client::open(info)
            .map_err(|e| transport_error(&e, &format!("connecting to {label}")))?;
        let config = manager_config(s);
        let conns = (0..s.pool_size.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| transport_error(&e, &format!("connecting to {label}")))?;
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
        let opened = try_join_all(self.conns[..n].iter().map(|c| {
            let mut c = c.clone();
            let ping = &ping;
            async move { c.send_packed_command(ping).await }
        }));
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

    fn pick(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    /// Runs one command.
    pub(crate) async fn exec(&self, cmd: &Cmd) -> Result<Value, TransportError> {
        let mut conn = self.pick();
        let result = conn.send_packed_command(&to_redis_cmd(cmd)).await;
        reply(result, || cmd.name())
    }

    /// Runs a pipeline in one round trip.
    pub(crate) async fn pipeline(&self, cmds: &[Cmd]) -> Result<Vec<Value>, TransportError> {
        let mut conn = self.pick();
        let pipe = to_redis_pipeline(cmds);
        let result = conn.send_packed_commands(&pipe, 0, cmds.len()).await;
        replies(result, cmds.len(), || "pipeline".into())
    }
}
