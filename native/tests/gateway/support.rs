//! Starting a Redis and a gateway in front of it, and talking to it raw.

use std::sync::Arc;

use larder_edge::RestTransport;
use larder_native::gateway::{Gateway, GatewayBuilder, SpawnedGateway, Token};
use larder_native::testing::{RedisServer, RedisServerBuilder};
use larder_native::{RedisOptions, RedisTransport};

pub(crate) const FULL: &str = "full-token-for-tests-0123456789";
pub(crate) const READ_ONLY: &str = "read-only-token-for-tests-0123456789";

/// A Redis server, the native transport to it, and a gateway in front.
pub(crate) struct Setup {
    pub(crate) redis: RedisServer,
    pub(crate) native: RedisTransport,
    pub(crate) gateway: SpawnedGateway,
    pub(crate) http: reqwest::Client,
    /// The gateway's `gateway` metrics label (unique in this test process).
    pub(crate) name: String,
}

/// The Prometheus recorder of this test process, installed once: every gateway renders it,
/// and tells its own series apart by its name.
pub(crate) fn prometheus() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("the only recorder of this process")
        })
        .clone()
}

/// The sum of the samples of `name` in Prometheus text whose labels include all of `labels`
/// (0 when there is none).
pub(crate) fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, set) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let has = |(k, v): &(&str, &str)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\""));
            (metric == name && labels.iter().all(has)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

impl Setup {
    /// Redis + a gateway with the default policy and both tokens.
    pub(crate) async fn start() -> Setup {
        Setup::start_with(|b| b).await
    }

    /// Redis + a gateway configured further by `configure`.
    pub(crate) async fn start_with(
        configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
    ) -> Setup {
        Setup::start_on(RedisServer::builder(), configure).await
    }

    /// A Redis started from `server` (password, arguments) + a gateway configured by
    /// `configure`.
    pub(crate) async fn start_on(
        server: RedisServerBuilder,
        configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
    ) -> Setup {
        Setup::start_on_with(server, |o| o, configure).await
    }

    /// [`start_on`](Setup::start_on) with the gateway's transport options changed by `opts`.
    pub(crate) async fn start_on_with(
        server: RedisServerBuilder,
        opts: impl FnOnce(RedisOptions) -> RedisOptions,
        configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
    ) -> Setup {
        let redis = tokio::task::spawn_blocking(move || server.start())
            .await
            .unwrap()
            .expect("redis-server starts");
        let native = RedisTransport::from_options(&opts(RedisOptions::from_url(&redis.url())))
            .await
            .expect("native transport connects");
        static GATEWAYS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "test-{}",
            GATEWAYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let builder = Gateway::builder(Arc::new(native.clone()))
            .name(&name)
            .prometheus(prometheus())
            .token(Token::new(FULL).unwrap())
            .read_only_token(Token::new(READ_ONLY).unwrap());
        let gateway = configure(builder).build().expect("gateway builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = gateway.spawn(listener).unwrap();
        Setup {
            redis,
            native,
            gateway,
            http: reqwest::Client::new(),
            name,
        }
    }

    /// The edge transport to the gateway (full token, base64 arguments on).
    pub(crate) fn edge(&self) -> RestTransport {
        RestTransport::builder(self.gateway.url(), FULL)
            .base64_args(true)
            .build()
            .unwrap()
    }

    /// A metric of this gateway (its `gateway` label) from `/metrics`: the sum of the
    /// samples of `name` with all of `labels`.
    pub(crate) async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut all = vec![("gateway", self.name.as_str())];
        all.extend_from_slice(labels);
        metric_value(&self.metrics().await, name, &all)
    }

    /// The gateway's `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.gateway.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A raw POST with the full token; returns the status, the sync token and the JSON body.
    pub(crate) async fn post(
        &self,
        path: &str,
        body: &str,
        base64: bool,
    ) -> (u16, Option<String>, serde_json::Value) {
        self.post_as(Some(FULL), path, body.as_bytes().to_vec(), base64)
            .await
    }

    pub(crate) async fn post_as(
        &self,
        token: Option<&str>,
        path: &str,
        body: Vec<u8>,
        base64: bool,
    ) -> (u16, Option<String>, serde_json::Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.gateway.url()))
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if base64 {
            req = req.header("Upstash-Encoding", "base64");
        }
        let resp = req.send().await.expect("the gateway answers");
        let status = resp.status().as_u16();
        let sync = resp
            .headers()
            .get("upstash-sync-token")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = resp.bytes().await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "non-JSON body from the gateway: {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, sync, json)
    }
}

/// The address a `larder gateway` child process prints first (`listening on ADDR`), read from
/// its stdout (taken from the child).
pub(crate) fn listening_addr(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut line)
        .expect("read the gateway's first line");
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("not a listening line: {line:?}"))
        .to_owned()
}
