//! Real Redis servers for the fleet tests: each test starts its own `redis-server` processes on free loopback
//! ports, in temporary directories, with an append-only file fsynced on every write (so a SIGKILL loses nothing
//! Redis acknowledged), and stops them when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const INSTALL: &str = "redis-server not found: install it with `apt-get install -y redis-server`";

/// Fails the test, naming the install command, when `program` is not on PATH.
fn require(program: &str) {
    match Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{INSTALL} ({program} is missing)")
        }
        Err(e) => panic!("running {program} failed: {e}"),
    }
}

/// A loopback port that nothing listens on, whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let salt = u64::from(std::process::id()).wrapping_mul(7919);
    for _ in 0..10_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
        let port = 20_000 + ((salt ^ nanos ^ n.wrapping_mul(104_729)) % 20_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    password: Option<String>,
    cluster: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// A standalone server.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port(), None, false)
    }

    /// A standalone server that requires `password`.
    pub fn with_password(password: &str) -> RedisServer {
        RedisServer::start_on(free_port(), Some(password), false)
    }

    /// A server on `port` (where something else may have waited for it to appear).
    pub fn start_on(port: u16, password: Option<&str>, cluster: bool) -> RedisServer {
        require("redis-server");
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().expect("temporary directory for redis-server"),
            password: password.map(str::to_owned),
            cluster,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"));
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
            ]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => panic!("{INSTALL}"),
                _ => panic!("starting redis-server failed: {e}"),
            });
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the server answers PING (it answers LOADING while it replays its append-only file).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.try_ping().is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not start; its log:\n{}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_ping(&self) -> redis::RedisResult<()> {
        let mut con = redis::Client::open(self.url())?
            .get_connection_with_timeout(Duration::from_millis(500))?;
        redis::cmd("PING").query::<String>(&mut con).map(drop)
    }

    /// `redis://[:password@]127.0.0.1:port`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// `redis-cli` against this server; returns its output without the final newline.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string(), "--raw"]);
        if let Some(p) = &self.password {
            cmd.args(["--no-auth-warning", "-a", p]);
        }
        let out = cmd
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{INSTALL} (redis-cli: {e})"));
        assert!(out.status.success(), "redis-cli {args:?} failed: {out:?}");
        let mut text = String::from_utf8(out.stdout).expect("UTF-8 reply");
        if text.ends_with('\n') {
            text.pop();
        }
        text
    }

    /// A plain connection, for reading and writing raw keys.
    pub fn raw(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("client")
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the test redis-server")
    }

    /// SIGKILL: no shutdown, no final write.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory, so it reloads its append-only file.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        require("redis-server");
        require("redis-cli");
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_on(free_port(), None, true))
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    /// The seed URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Waits until every node reports `cluster_state:ok` and knows three masters.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.nodes.iter().all(|n| {
                n.try_ping().is_ok()
                    && redis::Client::open(n.url())
                        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                        .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                        .is_ok_and(|info| {
                            info.contains("cluster_state:ok") && info.contains("cluster_size:3")
                        })
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster did not become ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
