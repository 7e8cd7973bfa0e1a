//! A real `redis-server` on a free port, without persistence.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// The `process_id` of the Redis answering on `port`, if one answers.
fn redis_pid(port: u16) -> Option<u32> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    while !text.contains("process_id:") || !text[text.find("process_id:")?..].contains('\n') {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let rest = &text[text.find("process_id:")? + "process_id:".len()..];
    rest.lines().next()?.trim().parse().ok()
}

/// `process` once the Redis on `port` is it (our own child, not another Redis on the
/// same port: it reports our pid); `None` when it ended (the port was taken).
fn answering(mut process: ChildProcess, port: u16) -> Option<ChildProcess> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if process.exited() {
            return None;
        }
        if redis_pid(port) == Some(process.pid()) {
            return Some(process);
        }
        assert!(
            Instant::now() < deadline,
            "redis-server did not start:\n{}",
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real `redis-server` on a free port, without persistence.
pub struct TestRedis {
    pub port: u16,
    pub process: ChildProcess,
}

impl TestRedis {
    /// Starts on a free port, retrying on another if the chosen one was taken meanwhile.
    pub fn start() -> Self {
        for _ in 1..PORT_ATTEMPTS {
            if let Some(redis) = Self::try_start_on(free_port()) {
                return redis;
            }
        }
        Self::start_on(free_port())
    }

    /// Starts on `port` (to bring a stopped Redis back where clients expect it).
    pub fn start_on(port: u16) -> Self {
        Self::try_start_on(port).unwrap_or_else(|| panic!("redis-server could not bind {port}"))
    }

    fn try_start_on(port: u16) -> Option<Self> {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            // DEBUG POPULATE fills a keyspace for the tests that need a large one.
            "--enable-debug-command",
            "local",
        ]);
        let process = ChildProcess::spawn("redis-server", cmd);
        let process = answering(process, port)?;
        Some(Self { port, process })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Every key, through `redis-cli` (installed with redis-server).
    pub fn keys(&self) -> Vec<String> {
        self.cli(&["--scan"]).lines().map(str::to_owned).collect()
    }

    /// How often Redis ran `command` (lowercase), from `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> String {
        self.cli(&["GET", key])
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends one inline command and returns the first line of the answer.
    pub fn command(&self, line: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

/// A real Redis Cluster of Debian's `redis-server`: three masters and a replica of each
/// on loopback ports, created with `redis-cli --cluster create`. Dropping it stops every
/// node.
pub struct TestRedisCluster {
    pub nodes: Vec<TestClusterNode>,
    _dir: tempfile::TempDir,
}

/// One node of a [`TestRedisCluster`].
pub struct TestClusterNode {
    pub port: u16,
    pub process: Option<ChildProcess>,
}

impl TestRedisCluster {
    /// Starts six nodes and joins them, retrying with other ports if one was taken.
    pub fn start() -> Self {
        for attempt in 1..=PORT_ATTEMPTS {
            if let Some(cluster) = Self::try_start() {
                return cluster;
            }
            eprintln!("redis cluster: a port was taken, attempt {attempt}");
        }
        panic!("the redis cluster found no free ports in {PORT_ATTEMPTS} attempts");
    }

    fn try_start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let (port, bus) = (free_port(), free_port());
            let mut cmd = Command::new("redis-server");
            cmd.current_dir(dir.path()).args([
                "--port",
                &port.to_string(),
                "--cluster-port",
                &bus.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "2000",
                // A replica takes over however long its link was down (a test's
                // replica may have synced only a moment ago).
                "--cluster-replica-validity-factor",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
            ]);
            let process = answering(ChildProcess::spawn("redis-cluster-node", cmd), port)?;
            nodes.push(TestClusterNode {
                port,
                process: Some(process),
            });
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes, _dir: dir };
        cluster.wait_until_ok();
        Some(cluster)
    }

    /// Waits until every running node says the cluster is ok and agrees on three
    /// masters that each have a replica.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let settled = self.running().all(|n| {
                let replication = n.cli(&["INFO", "replication"]);
                (replication.contains("role:master")
                    || replication.contains("master_link_status:up"))
                    && n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
                    && n.cli(&["CLUSTER", "NODES"])
                        .lines()
                        .filter(|l| l.contains("master") && !l.contains("fail"))
                        .count()
                        == 3
            });
            if settled {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the redis cluster did not settle"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn running(&self) -> impl Iterator<Item = &TestClusterNode> {
        self.nodes.iter().filter(|n| n.process.is_some())
    }

    /// The nodes' URLs, for `redis.nodes`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Every key of the cluster (each master's).
    pub fn keys(&self) -> Vec<String> {
        self.running()
            .filter(|n| n.role() == "master")
            .flat_map(|n| {
                n.cli(&["--scan"])
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The node that is master now for `key`'s slot.
    pub fn master_of(&self, key: &str) -> &TestClusterNode {
        let any = self.running().next().expect("a node runs");
        let slot: u16 = any
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        self.running()
            .find(|n| n.role() == "master" && n.owns(slot))
            .expect("some master owns every slot")
    }

    /// A replica of `master`.
    pub fn replica_of(&self, master: &TestClusterNode) -> &TestClusterNode {
        let id = master.cli(&["CLUSTER", "MYID"]).trim().to_string();
        self.running()
            .find(|n| {
                n.cli(&["INFO", "replication"]).contains("role:slave") && {
                    n.cli(&["CLUSTER", "NODES"])
                        .lines()
                        .any(|l| l.contains("myself") && l.contains(&id))
                }
            })
            .expect("every master has a replica")
    }

    /// Stops the node on `port` (a master that dies).
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        node.process = None;
    }
}

impl TestClusterNode {
    /// A handle on the node at `port` that does not own its process (for `redis-cli`).
    pub fn at(port: u16) -> Self {
        Self {
            port,
            process: None,
        }
    }

    /// `master` or `slave`, from `INFO replication`.
    pub fn role(&self) -> String {
        self.cli(&["INFO", "replication"])
            .lines()
            .find_map(|l| l.strip_prefix("role:"))
            .unwrap_or("")
            .trim()
            .to_string()
    }

    fn owns(&self, slot: u16) -> bool {
        self.cli(&["CLUSTER", "NODES"])
            .lines()
            .filter(|l| l.contains("myself"))
            .flat_map(|l| {
                l.split_whitespace()
                    .skip(8)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .any(|range| match range.split_once('-') {
                Some((a, b)) => {
                    (a.parse::<u16>().unwrap_or(1)..=b.parse().unwrap_or(0)).contains(&slot)
                }
                None => range.parse::<u16>().ok() == Some(slot),
            })
    }

    /// `redis-cli` against this node.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A real Redis Sentinel setup of Debian's `redis-server`: a master, a replica of it, and
/// one sentinel (quorum 1) that watches them as `intercom-master`, on loopback ports.
/// Dropping it stops all three.
pub struct TestRedisSentinel {
    /// The two data nodes; which one is master changes with a failover.
    pub nodes: Vec<TestClusterNode>,
    pub sentinel: TestClusterNode,
    _dir: tempfile::TempDir,
}

/// The name the sentinel knows the master by.
pub const SENTINEL_MASTER: &str = "intercom-master";

impl TestRedisSentinel {
    /// Starts the three processes, retrying with other ports if one was taken.
    pub fn start() -> Self {
        for attempt in 1..=PORT_ATTEMPTS {
            if let Some(sentinel) = Self::try_start() {
                return sentinel;
            }
            eprintln!("redis sentinel: a port was taken, attempt {attempt}");
        }
        panic!("redis sentinel found no free ports in {PORT_ATTEMPTS} attempts");
    }

    fn try_start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let data_node = |port: u16, replica_of: Option<u16>| {
            let mut cmd = Command::new("redis-server");
            cmd.current_dir(dir.path()).args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]);
            if let Some(master) = replica_of {
                cmd.args(["--replicaof", "127.0.0.1", &master.to_string()]);
            }
            answering(ChildProcess::spawn("redis-sentinel-node", cmd), port)
        };
        let (master, replica, watcher) = (free_port(), free_port(), free_port());
        let nodes = vec![
            TestClusterNode {
                port: master,
                process: Some(data_node(master, None)?),
            },
            TestClusterNode {
                port: replica,
                process: Some(data_node(replica, Some(master))?),
            },
        ];
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {watcher}\nbind 127.0.0.1\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 5000\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.current_dir(dir.path())
            .arg(config.to_str().unwrap())
            .arg("--sentinel");
        let sentinel = TestClusterNode {
            port: watcher,
            process: Some(answering(
                ChildProcess::spawn("redis-sentinel", cmd),
                watcher,
            )?),
        };
        let setup = Self {
            nodes,
            sentinel,
            _dir: dir,
        };
        setup.wait_until_watched();
        Some(setup)
    }

    /// Waits until the replica is in sync and the sentinel knows it (a failover needs
    /// a replica to promote).
    fn wait_until_watched(&self) {
        let deadline = Instant::now() + PATIENCE * 2;
        loop {
            let synced = self.nodes[1]
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up");
            let known = self
                .sentinel
                .cli(&["SENTINEL", "REPLICAS", SENTINEL_MASTER])
                .contains(&self.nodes[1].port.to_string());
            if synced && known {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel did not see the replica"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The port of the master the sentinel names now.
    pub fn master_port(&self) -> u16 {
        self.sentinel
            .cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER])
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The node that is master now.
    pub fn master(&self) -> &TestClusterNode {
        let port = self.master_port();
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("the sentinel names a node")
    }

    /// Hands the master over to its replica (`SENTINEL FAILOVER`) and waits until the
    /// sentinel names the new master, it answers as one, and the old master is its
    /// synced replica (until then a write can still reach the old master, and is lost
    /// when it resyncs: Redis replicates asynchronously).
    pub async fn failover(&self) {
        let before = self.master_port();
        let answer = self
            .sentinel
            .cli(&["SENTINEL", "FAILOVER", SENTINEL_MASTER]);
        assert!(answer.contains("OK"), "SENTINEL FAILOVER: {answer}");
        let old = self
            .nodes
            .iter()
            .find(|n| n.port == before)
            .expect("a node");
        // Polled, not slept: the test's load runs on this thread and must keep sending
        // (a client blocked here for the seconds of a failover leaves the connections it
        // opened silent, and the server answers them 408).
        let over = eventually(PATIENCE * 2, async || {
            let now = self.master_port();
            let demoted = old.cli(&["INFO", "replication"]);
            now != before
                && now != 0
                && self.master().role() == "master"
                && demoted.contains("role:slave")
                && demoted.contains("master_link_status:up")
        })
        .await;
        assert!(over, "the sentinel did not fail over");
    }
}

impl RedisUnderTest for TestRedisSentinel {
    fn section(&self) -> String {
        format!(
            r#"
                [redis]
                mode = "sentinel"
                sentinels = ["redis://127.0.0.1:{}"]
                master_name = "{SENTINEL_MASTER}"
                timeout = "5s"
            "#,
            self.sentinel.port
        )
    }
    fn keys(&self) -> Vec<String> {
        self.master()
            .cli(&["--scan"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
    fn get(&self, key: &str) -> String {
        self.master().cli(&["GET", key])
    }
}

/// What a test asks of the shared Redis, whichever it runs: one server or a cluster.
pub trait RedisUnderTest {
    /// `[redis]` for it, with a per-call deadline of seconds (see [`redis_section`]).
    fn section(&self) -> String;
    /// Every key (on a cluster, each master's).
    fn keys(&self) -> Vec<String>;
    /// The raw value of `key`.
    fn get(&self, key: &str) -> String;
}

impl RedisUnderTest for TestRedis {
    fn section(&self) -> String {
        format!(
            r#"
                [redis]
                url = "{}"
                timeout = "5s"
            "#,
            self.url()
        )
    }
    fn keys(&self) -> Vec<String> {
        TestRedis::keys(self)
    }
    fn get(&self, key: &str) -> String {
        TestRedis::get(self, key)
    }
}

impl RedisUnderTest for TestRedisCluster {
    fn section(&self) -> String {
        let nodes: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!(
            r#"
                [redis]
                mode = "cluster"
                nodes = [{}]
                timeout = "5s"
            "#,
            nodes.join(", ")
        )
    }
    fn keys(&self) -> Vec<String> {
        TestRedisCluster::keys(self)
    }
    fn get(&self, key: &str) -> String {
        self.master_of(key).cli(&["GET", key])
    }
}
