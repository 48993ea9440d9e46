//! Throw-away etcd servers for tests: each in its own data directory under
//! the temporary folder, on free ports, ready when `/health` says so
//! (within a deadline), killed by PID and removed on drop — also when the
//! test panics. Never on 2379/2380.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long an etcd may take to become healthy.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// A free TCP port on `ip` (bound, then released).
pub fn free_port(ip: IpAddr) -> u16 {
    let l = TcpListener::bind(SocketAddr::new(ip, 0)).expect("binding a free port");
    let port = l.local_addr().expect("local address").port();
    assert!(port != 2379 && port != 2380);
    port
}

/// Runs `f` on a thread inside the network namespace at `netns` (or here).
fn in_netns<T: Send>(netns: Option<&Path>, f: impl FnOnce() -> T + Send) -> T {
    let Some(path) = netns else { return f() };
    std::thread::scope(|s| {
        s.spawn(move || {
            use std::os::fd::AsRawFd;
            let file =
                std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // SAFETY: setns on this thread only, with a namespace fd we own.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("segment-test-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temporary directory");
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Certificates for a TLS etcd and its clients, made with the openssl CLI.
#[derive(Debug)]
pub struct Certs {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Certs {
    /// A CA, a server certificate for `server_ip`, and a client certificate
    /// with common name `client_cn`, all signed by the CA.
    pub fn generate(server_ip: IpAddr, client_cn: &str) -> Self {
        let dir = TempDir::new("certs");
        let p = |n: &str| dir.path.join(n);
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            s(&p("ca.key")),
            "-out",
            s(&p("ca.pem")),
            "-subj",
            "/CN=segment-test-ca",
            "-days",
            "2",
        ]);
        let sign = |name: &str, cn: &str, ext: &str| {
            std::fs::write(p(&format!("{name}.ext")), ext).expect("writing an extension file");
            openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                s(&p(&format!("{name}.key"))),
                "-out",
                s(&p(&format!("{name}.csr"))),
                "-subj",
                &format!("/CN={cn}"),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                s(&p(&format!("{name}.csr"))),
                "-CA",
                s(&p("ca.pem")),
                "-CAkey",
                s(&p("ca.key")),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                s(&p(&format!("{name}.pem"))),
                "-extfile",
                s(&p(&format!("{name}.ext"))),
            ]);
        };
        sign(
            "server",
            "etcd",
            &format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:{server_ip}\n"
            ),
        );
        sign(
            "client",
            client_cn,
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        );
        Self {
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            dir,
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("running openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One etcd member's fixed identity (ports survive a restart).
#[derive(Debug, Clone)]
struct Member {
    name: String,
    ip: IpAddr,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
}

impl Member {
    fn new(name: &str, ip: IpAddr, netns: Option<&Path>) -> Self {
        in_netns(netns, || Self {
            name: name.to_owned(),
            ip,
            client_port: free_port(ip),
            peer_port: free_port(ip),
            metrics_port: free_port(ip),
        })
    }

    fn peer_url(&self) -> String {
        format!("http://{}", SocketAddr::new(self.ip, self.peer_port))
    }
}

/// A running etcd (one member).
#[derive(Debug)]
pub struct Etcd {
    member: Member,
    cluster: String,
    token: String,
    tls: bool,
    tls_files: Option<(PathBuf, PathBuf, PathBuf)>,
    extra: Vec<String>,
    child: Option<Child>,
    data: TempDir,
    started_once: bool,
    /// The network namespace etcd runs in (None: this one).
    netns: Option<PathBuf>,
}

impl Etcd {
    /// A single-member etcd on 127.0.0.1.
    pub fn start() -> Self {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// A single-member etcd listening on `ip` (an address of this namespace).
    pub fn start_on(ip: IpAddr) -> Self {
        Self::start_in(None, ip, None)
    }

    /// A single-member etcd inside the network namespace at `netns`,
    /// listening on `ip` (an address there), with TLS and client
    /// certificates if `certs` is given.
    pub fn start_in(netns: Option<&Path>, ip: IpAddr, certs: Option<&Certs>) -> Self {
        let tls = certs.map(|c| (c.ca.clone(), c.server_cert.clone(), c.server_key.clone()));
        let mut e = Self::new_member_in(netns, "n0", ip, tls, &[]);
        e.start_single();
        e
    }

    /// A single-member etcd on 127.0.0.1 that accepts only TLS clients with
    /// a certificate signed by `certs.ca`.
    pub fn start_tls(certs: &Certs) -> Self {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut e = Self::new_member(
            "n0",
            ip,
            Some((
                certs.ca.clone(),
                certs.server_cert.clone(),
                certs.server_key.clone(),
            )),
            &[],
        );
        e.start_single();
        e
    }

    /// Spawns a single member and waits for it; when a port it was given
    /// was taken meanwhile by someone else (free ports are only free when
    /// chosen), chooses new ports and tries again.
    fn start_single(&mut self) {
        for _ in 0..5 {
            self.cluster = format!("{}={}", self.member.name, self.member.peer_url());
            self.spawn();
            match self.try_wait_healthy(READY_DEADLINE) {
                Ok(()) => return,
                Err(log) if log.contains("address already in use") => {
                    self.kill9();
                    let _ = std::fs::remove_dir_all(self.data.path.join("data"));
                    self.started_once = false;
                    self.member =
                        Member::new(&self.member.name, self.member.ip, self.netns.as_deref());
                }
                Err(log) => panic!("etcd {} did not start: {log}", self.member.name),
            }
        }
        panic!("etcd {}: no free ports after 5 attempts", self.member.name);
    }

    fn new_member(
        name: &str,
        ip: IpAddr,
        tls: Option<(PathBuf, PathBuf, PathBuf)>,
        extra: &[&str],
    ) -> Self {
        Self::new_member_in(None, name, ip, tls, extra)
    }

    fn new_member_in(
        netns: Option<&Path>,
        name: &str,
        ip: IpAddr,
        tls: Option<(PathBuf, PathBuf, PathBuf)>,
        extra: &[&str],
    ) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self {
            netns: netns.map(Path::to_path_buf),
            member: Member::new(name, ip, netns),
            cluster: String::new(),
            token: format!("segment-test-{}-{n}", std::process::id()),
            tls: tls.is_some(),
            tls_files: tls,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            data: TempDir::new(&format!("etcd-{name}")),
            started_once: false,
        }
    }

    /// `http://IP:PORT` (or https with TLS): what `--store` takes.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            SocketAddr::new(self.member.ip, self.member.client_port)
        )
    }

    pub fn name(&self) -> &str {
        &self.member.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) {
        let m = &self.member;
        let client = self.url();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("etcd");
                c
            }
            None => Command::new("etcd"),
        };
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.data.path.join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(m.peer_url())
            .arg("--listen-metrics-urls")
            .arg(format!("http://{}", SocketAddr::new(m.ip, m.metrics_port)))
            .arg("--initial-cluster")
            .arg(&self.cluster)
            .arg("--initial-cluster-state")
            .arg(if self.started_once { "existing" } else { "new" })
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .args([
                "--unsafe-no-fsync",
                "--logger",
                "zap",
                "--log-level",
                "error",
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.data.path.join("etcd.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        if let Some((ca, cert, key)) = &self.tls_files {
            cmd.arg("--trusted-ca-file")
                .arg(ca)
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--client-cert-auth");
        }
        self.child = Some(
            cmd.spawn()
                .expect("starting etcd (run `cargo xtask setup`)"),
        );
        self.started_once = true;
    }

    /// Waits until `/health` answers `"health":"true"`; panics (with the
    /// log) after `deadline`.
    pub fn wait_healthy(&mut self, deadline: Duration) {
        if let Err(e) = self.try_wait_healthy(deadline) {
            panic!("etcd {}: {e}", self.member.name);
        }
    }

    /// Like [`Etcd::wait_healthy`], returning what went wrong (with the log).
    pub fn try_wait_healthy(&mut self, deadline: Duration) -> Result<(), String> {
        let until = Instant::now() + deadline;
        let addr = SocketAddr::new(self.member.ip, self.member.metrics_port);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("exited ({status}): {}", self.log()));
            }
            if in_netns(self.netns.as_deref(), || healthy(addr)) {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!("not healthy within {deadline:?}: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `/health` says healthy right now.
    pub fn is_healthy(&self) -> bool {
        let addr = SocketAddr::new(self.member.ip, self.member.metrics_port);
        in_netns(self.netns.as_deref(), || healthy(addr))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path.join("etcd.log")).unwrap_or_default()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT (a hung member, not a closed one).
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: signalling our own child by PID.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// Starts again from the same data directory and ports (not waiting
    /// for health: a cluster member needs its peers for that).
    pub fn restart_no_wait(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts again from the same data directory and ports.
    pub fn restart(&mut self) {
        self.restart_no_wait();
        self.wait_healthy(READY_DEADLINE);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

/// Three (or more) members on loopback with short election timeouts.
#[derive(Debug)]
pub struct Cluster {
    pub members: Vec<Etcd>,
}

impl Cluster {
    /// Starts `n` members (choosing new ports and starting over when one
    /// of the chosen ports was taken meanwhile).
    pub fn start(n: usize) -> Self {
        for _ in 0..5 {
            if let Some(c) = Self::try_start(n) {
                return c;
            }
        }
        panic!("a {n}-member etcd cluster did not start: no free ports after 5 attempts");
    }

    fn try_start(n: usize) -> Option<Self> {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let timing = ["--heartbeat-interval", "50", "--election-timeout", "500"];
        let mut members: Vec<Etcd> = (0..n)
            .map(|i| Etcd::new_member(&format!("m{i}"), ip, None, &timing))
            .collect();
        let cluster = members
            .iter()
            .map(|m| format!("{}={}", m.member.name, m.member.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let token = members[0].token.clone();
        for m in &mut members {
            m.cluster = cluster.clone();
            m.token = token.clone();
            m.spawn();
        }
        for m in &mut members {
            match m.try_wait_healthy(READY_DEADLINE) {
                Ok(()) => {}
                Err(log) if log.contains("address already in use") => return None,
                Err(log) => panic!("etcd {}: {log}", m.member.name),
            }
        }
        Some(Self { members })
    }

    /// Every member's client URL, comma-separated.
    pub fn urls(&self) -> String {
        self.members
            .iter()
            .map(Etcd::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
