//! The HTTP accept loop shared by `larder gateway` and `larder proxy`: a connection cap and a
//! header read timeout (which `axum::serve` cannot configure), and a graceful shutdown that
//! lets requests in flight — streamed answers included — finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets
/// the open connections finish, and returns. `on_connection` runs for each accepted
/// connection; what it returns lives as long as the connection (a gauge guard).
pub(crate) async fn serve<G: Send + 'static>(
    router: Router,
    listener: tokio::net::TcpListener,
    limits: Limits,
    on_connection: impl Fn() -> G,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let max = limits.max_connections.max(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A free slot first, then a connection: at the cap, clients wait in the backlog.
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) => continue,
                Err(e) => {
                    // EMFILE and friends: wait for connections to close.
                    tracing::error!("cannot accept a connection: {e}; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let open = on_connection();
        let service = TowerToHyperService::new(router.clone());
        let header_timeout = limits.header_read_timeout;
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = permit;
            let _open = open;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("connection ended: {e}");
                    }
                }
                () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot: all slots back means all connections are done.
    let _ = slots
        .acquire_many(u32::try_from(max).unwrap_or(u32::MAX))
        .await;
}

/// A server running in the background. Dropping it stops the server.
#[derive(Debug)]
pub struct Spawned {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Spawned {
    /// Runs `serve(listener, stop)` in a task; `stop` completes when the handle asks.
    pub(crate) fn spawn<F, Fut>(
        listener: tokio::net::TcpListener,
        serve: F,
    ) -> std::io::Result<Self>
    where
        F: FnOnce(tokio::net::TcpListener, futures_util::future::BoxFuture<'static, ()>) -> Fut,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            Box::pin(async {
                let _ = rx.await;
            }),
        ));
        Ok(Spawned {
            addr,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Its base URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections, waits for requests in flight, and returns how serving
    /// ended.
    ///
    /// # Errors
    ///
    /// The error that ended serving, if any.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            None => Ok(()),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
