//! Tests of `larder_native::testing` against real `redis-server` processes.

use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use larder_native::testing::{
    NodeRole, RedisCluster, RedisServer, RespValue, SentinelSetup, command,
};

fn pong() -> RespValue {
    RespValue::Simple("PONG".into())
}

/// Whether a process with this pid exists (a reaped child is gone from /proc and
/// `kill(pid, 0)` fails with ESRCH).
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    exists || Path::new(&format!("/proc/{pid}")).exists()
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    eprintln!("{what}: {:.2?}", start.elapsed());
    out
}

#[test]
fn standalone_ping_kill_restart_same_port_and_drop_kills() {
    let mut server = timed("standalone start", RedisServer::start).unwrap();
    let port = server.port();
    assert_eq!(server.addr(), format!("127.0.0.1:{port}"));
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}/"));
    assert_eq!(command(&server.addr(), &["PING"]).unwrap(), pong());
    assert!(server.is_running());
    assert!(server.log_path().exists());

    let pid = server.pid().unwrap();
    server.kill();
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    assert!(!alive(pid), "killed pid {pid} still exists");
    assert!(command(&server.addr(), &["PING"]).is_err());

    timed("standalone restart", || server.restart()).unwrap();
    assert_eq!(server.port(), port);
    assert_eq!(server.cmd(&["PING"]).unwrap(), pong());
    let pid = server.pid().unwrap();

    server.stop();
    assert!(!alive(pid));
    server.restart().unwrap();
    let pid = server.pid().unwrap();
    let dir = server.dir().to_owned();
    drop(server);
    assert!(!alive(pid), "dropped server pid {pid} still exists");
    assert!(!dir.exists(), "temp dir not removed");
}

#[test]
fn two_standalones_get_different_ports() {
    let a = RedisServer::start().unwrap();
    let b = RedisServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.pid(), b.pid());
    assert_eq!(a.cmd(&["PING"]).unwrap(), pong());
    assert_eq!(b.cmd(&["PING"]).unwrap(), pong());
}

#[test]
fn password_and_extra_args() {
    let server = RedisServer::builder()
        .password("s3cret pw")
        .arg("--maxmemory")
        .arg("10mb")
        .start()
        .unwrap();
    let port = server.port();
    assert_eq!(
        server.url(),
        format!("redis://:s3cret%20pw@127.0.0.1:{port}/")
    );
    // Without AUTH the server refuses.
    match command(&server.addr(), &["PING"]).unwrap() {
        RespValue::Error(e) => assert!(e.starts_with("NOAUTH"), "{e}"),
        other => panic!("expected NOAUTH, got {other:?}"),
    }
    assert_eq!(server.cmd(&["PING"]).unwrap(), pong());
    let max = server.cmd(&["CONFIG", "GET", "maxmemory"]).unwrap();
    assert_eq!(max.as_array().unwrap()[1].as_int(), Some(10 * 1024 * 1024));
}

#[test]
fn drop_during_panic_kills_the_server() {
    let (tx, rx) = mpsc::channel();
    let joined = thread::spawn(move || {
        let server = RedisServer::start().unwrap();
        tx.send(server.pid().unwrap()).unwrap();
        panic!("test panic with a live server");
    })
    .join();
    assert!(joined.is_err());
    let pid = rx.recv().unwrap();
    assert!(!alive(pid), "server pid {pid} survived the panic");
}

#[test]
fn server_outlives_the_thread_that_started_it() {
    // PR_SET_PDEATHSIG is per spawning thread: the harness spawns from its own long-lived
    // thread, so a server started on a short-lived thread (like tokio's blocking pool)
    // keeps running while its handle lives.
    let server = thread::spawn(|| RedisServer::start().unwrap())
        .join()
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    assert_eq!(server.cmd(&["PING"]).unwrap(), pong());
}

#[test]
fn harness_works_from_async_code() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(server.cmd(&["PING"]).unwrap(), pong());
        // Called directly from async code too.
        let other = RedisServer::start().unwrap();
        assert_ne!(server.port(), other.port());
    });
}

#[test]
fn cluster_starts_healthy_and_fails_over() {
    let mut cluster = timed("cluster start (3+3)", RedisCluster::start_default).unwrap();
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 6);
    assert_eq!(
        nodes.iter().filter(|n| n.role == NodeRole::Master).count(),
        3
    );
    assert_eq!(
        nodes.iter().filter(|n| n.role == NodeRole::Replica).count(),
        3
    );
    assert_eq!(cluster.urls().len(), 6);
    assert_eq!(cluster.seed_urls().len(), 6);
    let masters = cluster.master_addrs();
    assert_eq!(masters.len(), 3);

    // Every node: cluster_state:ok, slots covered by the 3 masters; replicas linked.
    for node in &nodes {
        let info = cluster
            .cmd(node.port, &["CLUSTER", "INFO"])
            .unwrap()
            .into_text()
            .unwrap();
        assert!(info.contains("cluster_state:ok"), "{}: {info}", node.port);
        assert!(
            info.contains("cluster_slots_ok:16384"),
            "{}: {info}",
            node.port
        );
        if node.role == NodeRole::Replica {
            let repl = cluster
                .cmd(node.port, &["INFO", "replication"])
                .unwrap()
                .into_text()
                .unwrap();
            assert!(repl.contains("master_link_status:up"), "{repl}");
        }
    }
    // A key lands on its slot's master (MOVED elsewhere).
    let mut stored = 0;
    for i in 0..50 {
        let key = format!("k{i}");
        for m in &masters {
            match command(m, &["SET", &key, "v"]).unwrap() {
                RespValue::Simple(ok) if ok == "OK" => stored += 1,
                RespValue::Error(e) if e.starts_with("MOVED") => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(stored, 50);

    let old = cluster.kill_master(0).unwrap();
    assert!(!cluster.master_addrs().is_empty());
    let new = timed("cluster failover", || {
        cluster.wait_for_failover(old, Duration::from_secs(30))
    })
    .unwrap();
    assert_ne!(new, old);
    assert!(!cluster.master_addrs().contains(&format!("127.0.0.1:{old}")));
    assert_eq!(cluster.master_addrs().len(), 3);
    assert_eq!(cluster.seed_urls().len(), 5);

    // The old master comes back as a replica.
    timed("cluster rejoin", || {
        cluster.restart_node(old).unwrap();
        cluster.wait_ok(Duration::from_secs(30))
    })
    .unwrap();
    let back = cluster.nodes().into_iter().find(|n| n.port == old).unwrap();
    assert_eq!(back.role, NodeRole::Replica);

    let pids: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid).collect();
    assert_eq!(pids.len(), 6);
    drop(cluster);
    for pid in pids {
        assert!(!alive(pid), "cluster pid {pid} survived drop");
    }
}

#[test]
fn sentinel_agrees_and_fails_over() {
    let mut setup = timed("sentinel start", SentinelSetup::start).unwrap();
    assert_eq!(setup.master_name(), "mymaster");
    assert_eq!(setup.sentinel_addrs().len(), 3);
    assert_eq!(setup.sentinel_urls().len(), 3);
    let data = setup.data_nodes();
    assert_eq!(data[0].role, NodeRole::Master);
    assert_eq!(data[1].role, NodeRole::Replica);
    let old = setup.master_addr().unwrap();
    assert_eq!(old, data[0].addr());
    for s in setup.sentinel_addrs() {
        let reply = command(&s, &["SENTINEL", "get-master-addr-by-name", "mymaster"]).unwrap();
        let parts: Vec<String> = reply
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_text().unwrap())
            .collect();
        assert_eq!(parts.join(":"), old);
    }

    // Kill the master: the sentinels promote the replica; the old master restarts as its
    // replica and the setup settles.
    let killed = setup.kill_master().unwrap();
    assert_eq!(format!("127.0.0.1:{killed}"), old);
    let new = timed("sentinel failover after kill", || {
        setup.wait_for_new_master(&old, Duration::from_secs(30))
    })
    .unwrap();
    assert_eq!(new, data[1].addr(), "the old replica is promoted");
    timed("sentinel restart old master + settle", || {
        setup.restart_node(killed)?;
        setup.wait_ok(Duration::from_secs(30))
    })
    .unwrap();
    // Settled: one master, one replica, and the sentinels name that master. Usually the
    // old master came back as a replica; on a loaded machine the sentinels may instead have
    // judged the new master down meanwhile and failed back to the old one, which is also a
    // correct failover, so the roles are not pinned to nodes here.
    let nodes = setup.data_nodes();
    let roles: Vec<NodeRole> = nodes.iter().map(|n| n.role).collect();
    assert!(
        roles == [NodeRole::Replica, NodeRole::Master]
            || roles == [NodeRole::Master, NodeRole::Replica],
        "one master and one replica: {roles:?}"
    );
    let current = setup.master_addr().unwrap();
    let master_node = nodes.iter().find(|n| n.role == NodeRole::Master).unwrap();
    assert_eq!(current, master_node.addr(), "the sentinels name the master");
    let other = nodes
        .iter()
        .find(|n| n.role == NodeRole::Replica)
        .unwrap()
        .addr();

    // A forced failover promotes the other node.
    setup.failover().unwrap();
    let newest = timed("sentinel forced failover", || {
        setup.wait_for_new_master(&current, Duration::from_secs(30))
    })
    .unwrap();
    assert_eq!(newest, other, "the replica is promoted");

    let pids: Vec<u32> = setup
        .data_nodes()
        .iter()
        .chain(&setup.sentinel_nodes())
        .filter_map(|n| n.pid)
        .collect();
    assert_eq!(pids.len(), 5);
    drop(setup);
    for pid in pids {
        assert!(!alive(pid), "sentinel setup pid {pid} survived drop");
    }
}
