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
        let mut process = ChildProcess::spawn("redis-server", cmd);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if process.exited() {
                return None; // the port was taken
            }
            // Our own child, not another Redis on the same port: it reports our pid.
            if redis_pid(port) == Some(process.pid()) {
                return Some(Self { port, process });
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start:\n{}",
                process.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
