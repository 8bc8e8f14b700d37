//! `rediss://` against a real TLS server: `redis-server --tls-port` with certificates from a
//! private CA made for the test (rcgen), one-way and mutual TLS.

use std::time::Duration;

use larder_core::transport::next_message;
use larder_core::{Cache, Cmd, Transport};
use larder_native::testing::RedisServer;
use larder_native::{RedisOptions, RedisTransport, TlsOptions};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::common::blocking;

/// A private CA and what it signed: a server certificate for 127.0.0.1 and a client one.
#[derive(Clone)]
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "larder test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");

    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server certificate");

    let client_key = KeyPair::generate().expect("client key");
    let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("client params");
    client_params
        .distinguished_name
        .push(DnType::CommonName, "larder test client");
    let client = client_params
        .signed_by(&client_key, &ca, &ca_key)
        .expect("client certificate");

    Pki {
        ca: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// A server that speaks TLS on its own port (its plain port stays for the harness), and
/// that port. `auth_clients`: `no` (one-way TLS) or `yes` (client certificate required).
fn tls_server(pki: &Pki, dir: &std::path::Path, auth_clients: &str) -> (RedisServer, u16) {
    let file = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path.display().to_string()
    };
    let (cert, key, ca) = (
        file("server.crt", &pki.server_cert),
        file("server.key", &pki.server_key),
        file("ca.crt", &pki.ca),
    );
    // The TLS port is picked free, but another process may take it before the server binds
    // it: then the start fails, and we pick again.
    let mut last = None;
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let started = RedisServer::builder()
            .args([
                "--tls-port".to_owned(),
                port.to_string(),
                "--tls-cert-file".to_owned(),
                cert.clone(),
                "--tls-key-file".to_owned(),
                key.clone(),
                "--tls-ca-cert-file".to_owned(),
                ca.clone(),
                "--tls-auth-clients".to_owned(),
                auth_clients.to_owned(),
            ])
            .start();
        match started {
            Ok(server) => return (server, port),
            Err(e) => last = Some(e),
        }
    }
    panic!("redis-server with TLS did not start: {last:?}");
}

/// A fresh PKI and a TLS server using it (the directory holding its files lives as long).
struct TlsSetup {
    pki: Pki,
    server: RedisServer,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsSetup {
    async fn start(auth_clients: &'static str) -> TlsSetup {
        let pki = pki();
        let dir = tempfile::tempdir().expect("temp dir");
        let (pki_ref, pki_dir) = (pki.clone(), dir.path().to_owned());
        let (server, port) = blocking(move || tls_server(&pki_ref, &pki_dir, auth_clients)).await;
        TlsSetup {
            pki,
            server,
            port,
            _dir: dir,
        }
    }
}

impl TlsSetup {
    /// Options for the TLS port that trust the test CA.
    fn trusting_the_ca(&self) -> RedisOptions {
        tls_opts(self.port).tls(TlsOptions::new().root_certs_pem(self.pki.ca.clone()))
    }
}

/// Connecting with `opts` fails with an error that contains every one of `words`.
async fn refused_saying(opts: &RedisOptions, words: &[&str]) {
    let err = RedisTransport::from_options(opts)
        .await
        .expect_err("the TLS handshake must fail");
    let text = err.to_string();
    assert!(
        words.iter().all(|w| text.contains(w)),
        "expected {words:?} in: {err}"
    );
}

fn tls_opts(port: u16) -> RedisOptions {
    RedisOptions::standalone(format!("rediss://127.0.0.1:{port}"))
        .dial_timeout(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_round_trips_and_is_refused_without_it() {
    let s = TlsSetup::start("no").await;

    let trusted = s.trusting_the_ca();
    let cache = crate::common::cache_with(&trusted.clone(), "tls")
        .await
        .expect("TLS connect with the private CA");
    cache.set("k", "over tls".into(), None).await.unwrap();
    assert_eq!(
        cache.get("k").await.unwrap().as_deref(),
        Some(&b"over tls"[..])
    );
    // The write went to the same server (read back over its plain port).
    assert!(
        matches!(s.server.cmd(&["GET", "tls:cache:k"]).unwrap(),
            larder_native::testing::RespValue::Bulk(ref b) if b == b"over tls"),
        "the TLS port and the plain port are one server"
    );

    // Pub/sub opens its own TLS connection with the same certificates.
    let transport = RedisTransport::from_options(&trusted)
        .await
        .expect("connect");
    let mut sub = transport.subscribe(b"tls-events").await.expect("subscribe");
    transport
        .exec(Cmd::new("PUBLISH").arg("tls-events").arg("hello"))
        .await
        .expect("publish");
    let msg = tokio::time::timeout(Duration::from_secs(2), next_message(&mut *sub))
        .await
        .expect("a message within 2 s")
        .expect("subscription open");
    assert_eq!(&msg.payload[..], b"hello");

    // The webpki roots do not know the private CA: the handshake fails, with an error
    // that says why.
    refused_saying(
        &tls_opts(s.port),
        &["UnknownIssuer", "TLS handshake failed"],
    )
    .await;
    // Plain text to the TLS port does not work either.
    let plain = RedisOptions::standalone(format!("redis://127.0.0.1:{}", s.port))
        .dial_timeout(Duration::from_millis(500))
        .read_timeout(Duration::from_millis(300));
    assert!(RedisTransport::from_options(&plain).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let s = TlsSetup::start("yes").await;

    // The server requires a client certificate.
    refused_saying(
        &s.trusting_the_ca(),
        &["CertificateRequired", "client_identity_pem"],
    )
    .await;

    let identity = TlsOptions::new()
        .root_certs_pem(s.pki.ca.clone())
        .client_identity_pem(s.pki.client_cert.clone(), s.pki.client_key.clone());
    assert!(
        !format!("{identity:?}").contains("PRIVATE KEY"),
        "Debug must not print the key: {identity:?}"
    );
    let cache = crate::common::cache_with(&tls_opts(s.port).tls(identity), "tls")
        .await
        .expect("mutual TLS with the client certificate");
    cache.set("m", "mtls".into(), None).await.unwrap();
    assert_eq!(cache.get("m").await.unwrap().as_deref(), Some(&b"mtls"[..]));
}
