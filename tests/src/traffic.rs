//! Real traffic with real sockets, from inside a namespace: TCP and UDP echo
//! servers and clients bound to a chosen source address, ICMP echo through a
//! raw socket, and raw Ethernet frames through AF_PACKET.

use std::{
    io::{Read, Write},
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::Netns;

/// How long an exchange the policy should drop is given before it counts
/// as dropped.
pub const SHORT: Duration = Duration::from_millis(800);
/// How long an exchange the policy allows may take.
pub const LONG: Duration = Duration::from_secs(3);

pub fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// An address literal of a test.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A server thread that stops when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A TCP server on `addr` inside `ns` that echoes what it reads.
pub fn tcp_echo_server(ns: &Netns, addr: SocketAddr) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        s.set_nonblocking(false).ok();
                        s.set_read_timeout(Some(Duration::from_millis(200))).ok();
                        let mut buf = [0u8; 65536];
                        while !flag.load(Ordering::Relaxed) {
                            match s.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => break,
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server did not start");
    Server {
        stop,
        handle: Some(handle),
    }
}

/// A UDP server on `addr` inside `ns` that echoes every datagram.
pub fn udp_echo_server(ns: &Netns, addr: SocketAddr) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(100))).ok();
        ready_tx.send(()).expect("ready");
        let mut buf = [0u8; 65536];
        while !flag.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server did not start");
    Server {
        stop,
        handle: Some(handle),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Tcp {
    /// Connected and the payload came back intact.
    Echoed,
    /// An RST came back: the SYN got through and nothing listened.
    Refused,
    /// Nothing came back: the SYN (or its answer) was dropped.
    TimedOut,
    /// Connected, but the exchange failed.
    Broken(String),
}

fn bound_socket(src: Option<IpAddr>, dst: SocketAddr, ty: Type, proto: Protocol) -> Socket {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, ty, Some(proto)).expect("socket");
    if let Some(src) = src {
        s.bind(&SockAddr::from(SocketAddr::new(src, 0)))
            .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    }
    s
}

/// Asserts what a TCP exchange from `src` (in `ns`) to `dst` meets: an
/// allowed one must echo within [`LONG`]; a denied one must time out (the
/// SYN dropped, not refused) after [`SHORT`].
#[track_caller]
pub fn assert_tcp(ns: &Netns, src: Option<IpAddr>, dst: SocketAddr, want: Tcp) {
    let timeout = if want == Tcp::Echoed { LONG } else { SHORT };
    let got = tcp_exchange(ns, src, dst, timeout);
    assert_eq!(got, want, "TCP from {src:?} to {dst}");
}

/// Connects from `src` (or the default address) to `dst` and exchanges a
/// payload, inside `ns`.
pub fn tcp_exchange(ns: &Netns, src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> Tcp {
    ns.run(|| {
        let s = bound_socket(src, dst, Type::STREAM, Protocol::TCP);
        match s.connect_timeout(&SockAddr::from(dst), timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Tcp::Refused,
            Err(e)
                if e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                return Tcp::TimedOut;
            }
            Err(e) => return Tcp::Broken(format!("connect: {e}")),
        }
        let mut stream: std::net::TcpStream = s.into();
        stream.set_read_timeout(Some(timeout)).ok();
        let payload: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
        if let Err(e) = stream.write_all(&payload) {
            return Tcp::Broken(format!("write: {e}"));
        }
        let mut back = vec![0u8; payload.len()];
        match stream.read_exact(&mut back) {
            Ok(()) if back == payload => Tcp::Echoed,
            Ok(()) => Tcp::Broken("payload changed".into()),
            Err(e) => Tcp::Broken(format!("read: {e}")),
        }
    })
}

/// Sends one datagram from `src` to `dst` and waits for the echo.
pub fn udp_exchange(ns: &Netns, src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> bool {
    ns.run(|| {
        let s = bound_socket(src, dst, Type::DGRAM, Protocol::UDP);
        let sock: UdpSocket = s.into();
        sock.set_read_timeout(Some(timeout)).ok();
        let payload = b"segment-udp-probe";
        if sock.send_to(payload, dst).is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok((n, from)) = sock.recv_from(&mut buf)
                && from == dst
                && &buf[..n] == payload
            {
                return true;
            }
        }
        false
    })
}

/// Sends `n` UDP datagrams from `src` to `dst` (no reply expected).
pub fn udp_send(ns: &Netns, src: Option<IpAddr>, dst: SocketAddr, n: usize) {
    ns.run(|| {
        let s = bound_socket(src, dst, Type::DGRAM, Protocol::UDP);
        let sock: UdpSocket = s.into();
        for i in 0..n {
            sock.send_to(format!("probe {i}").as_bytes(), dst)
                .expect("send");
        }
    })
}

/// Internet checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// ICMP (or ICMPv6) echo from `src` to `dst`; true if the reply came back.
pub fn ping(ns: &Netns, src: Option<IpAddr>, dst: IpAddr, timeout: Duration) -> bool {
    ns.run(|| {
        let (domain, proto) = if dst.is_ipv4() {
            (Domain::IPV4, Protocol::ICMPV4)
        } else {
            (Domain::IPV6, Protocol::ICMPV6)
        };
        let s = Socket::new(domain, Type::RAW, Some(proto)).expect("raw socket");
        if let Some(src) = src {
            s.bind(&SockAddr::from(SocketAddr::new(src, 0)))
                .expect("bind");
        }
        let id = (std::process::id() as u16) ^ 0x5e67;
        let mut msg = vec![if dst.is_ipv4() { 8 } else { 128 }, 0, 0, 0];
        msg.extend_from_slice(&id.to_be_bytes());
        msg.extend_from_slice(&1u16.to_be_bytes());
        msg.extend_from_slice(b"segment-ping");
        if dst.is_ipv4() {
            let c = checksum(&msg);
            msg[2..4].copy_from_slice(&c.to_be_bytes());
        } // The kernel computes ICMPv6 checksums on raw sockets.
        s.send_to(&msg, &SockAddr::from(SocketAddr::new(dst, 0)))
            .expect("send");
        s.set_read_timeout(Some(Duration::from_millis(50))).ok();
        let deadline = Instant::now() + timeout;
        let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
        while Instant::now() < deadline {
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                // SAFETY: recv_from initialized the first n bytes.
                let b: Vec<u8> = buf[..n]
                    .iter()
                    .map(|x| unsafe { x.assume_init() })
                    .collect();
                // IPv4 raw sockets include the IP header.
                let icmp = if dst.is_ipv4() {
                    let ihl = usize::from(b[0] & 0x0f) * 4;
                    &b[ihl..]
                } else {
                    &b[..]
                };
                let reply = if dst.is_ipv4() { 0 } else { 129 };
                if icmp.len() >= 8 && icmp[0] == reply && icmp[4..6] == id.to_be_bytes() {
                    return true;
                }
            }
        }
        false
    })
}

/// An AF_PACKET socket on one interface: sends raw frames, or captures.
pub struct RawLink {
    sock: Socket,
    ifindex: u32,
}

impl RawLink {
    /// Opens the socket inside `ns` (the socket stays usable from any thread).
    pub fn open(ns: &Netns, iface: &str) -> Self {
        let ifindex = ns.ifindex(iface);
        let sock = ns.run(|| {
            const ETH_P_ALL: u16 = 0x0003;
            let s = Socket::new(
                Domain::PACKET,
                Type::RAW,
                Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))),
            )
            .expect("AF_PACKET socket");
            // SAFETY: sockaddr_ll is plain data; we fill the fields bind needs.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL.to_be();
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: binding a socket we own to a valid sockaddr_ll.
            let rc = unsafe {
                libc::bind(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
            s
        });
        sock.set_read_timeout(Some(Duration::from_millis(50))).ok();
        Self { sock, ifindex }
    }

    pub fn send(&self, frame: &[u8]) {
        let _ = self.ifindex;
        self.sock.send(frame).expect("send frame");
    }

    /// Every frame seen (in either direction) until `timeout`.
    pub fn frames(&self, timeout: Duration) -> Vec<Vec<u8>> {
        self.capture_with(&[], timeout)
    }

    /// Frames seen (in either direction) until `timeout` that contain `marker`.
    pub fn capture_with(&self, marker: &[u8], timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = [MaybeUninit::<u8>::uninit(); 65536];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                // SAFETY: recv initialized the first n bytes.
                let b: Vec<u8> = buf[..n]
                    .iter()
                    .map(|x| unsafe { x.assume_init() })
                    .collect();
                if marker.is_empty() || b.windows(marker.len()).any(|w| w == marker) {
                    out.push(b);
                }
            }
        }
        out
    }
}

/// What a [`Stream`] saw.
#[derive(Debug)]
pub struct StreamReport {
    /// Request/response exchanges completed.
    pub exchanges: u64,
    /// Longest time between two completed exchanges.
    pub max_gap: Duration,
    /// The first error (reset, short read, timeout), if any.
    pub error: Option<String>,
    /// TCP retransmissions of the client socket (from TCP_INFO).
    pub retransmits: u32,
}

/// A TCP connection exchanging small messages without pause, to see
/// whether anything (a reload, a restart) disturbs it.
pub struct Stream {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<StreamReport>>,
}

impl Stream {
    pub fn start(ns: &Netns, dst: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = ns.spawn(move || {
            let mut report = StreamReport {
                exchanges: 0,
                max_gap: Duration::ZERO,
                error: None,
                retransmits: 0,
            };
            let mut s = match std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(3)) {
                Ok(s) => s,
                Err(e) => {
                    report.error = Some(format!("connect: {e}"));
                    let _ = ready_tx.send(());
                    return report;
                }
            };
            s.set_nodelay(true).ok();
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let _ = ready_tx.send(());
            let msg = [0x42u8; 512];
            let mut back = [0u8; 512];
            let mut last = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                if let Err(e) = s.write_all(&msg).and_then(|_| s.read_exact(&mut back)) {
                    report.error = Some(format!("after {} exchanges: {e}", report.exchanges));
                    break;
                }
                if back != msg {
                    report.error = Some("payload changed".into());
                    break;
                }
                report.exchanges += 1;
                let now = Instant::now();
                report.max_gap = report.max_gap.max(now - last);
                last = now;
                std::thread::sleep(Duration::from_millis(2));
            }
            report.retransmits = tcp_retransmits(&s);
            report
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("stream did not start");
        Self {
            stop,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) -> StreamReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("stream thread")
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn tcp_retransmits(s: &std::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: getsockopt(TCP_INFO) fills at most `len` bytes of the zeroed
    // struct we pass.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        if rc == 0 {
            info.tcpi_total_retrans
        } else {
            u32::MAX
        }
    }
}

/// Tries, again and again, to open a connection the policy denies; counts
/// the attempts that got through.
pub struct Probe {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(u64, u64)>>,
}

impl Probe {
    pub fn start(ns: &Netns, src: Option<IpAddr>, dst: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = ns.spawn(move || {
            let (mut attempts, mut through) = (0u64, 0u64);
            while !flag.load(Ordering::Relaxed) {
                let s = bound_socket(src, dst, Type::STREAM, Protocol::TCP);
                attempts += 1;
                match s.connect_timeout(&SockAddr::from(dst), Duration::from_millis(150)) {
                    Ok(()) => through += 1,
                    // A refusal means the SYN reached the other side.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => through += 1,
                    Err(_) => {}
                }
            }
            (attempts, through)
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// (attempts, attempts that got through).
    pub fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("probe thread")
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A UDP sink that counts the datagrams it receives.
pub struct UdpSink {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
}

impl UdpSink {
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = ns.spawn(move || {
            let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            sock.set_read_timeout(Some(Duration::from_millis(50))).ok();
            ready_tx.send(()).expect("ready");
            let mut n = 0;
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if sock.recv_from(&mut buf).is_ok() {
                    n += 1;
                }
            }
            n
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("sink did not start");
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Datagrams received (waits a moment for stragglers).
    pub fn stop(mut self) -> u64 {
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("sink thread")
    }
}

/// A TCP connection opened inside a namespace, kept open by the test (so
/// that its conntrack entry lives across what the test does meanwhile).
pub fn connect(ns: &Netns, dst: SocketAddr) -> std::net::TcpStream {
    ns.run(|| {
        let s = std::net::TcpStream::connect_timeout(&dst, LONG).expect("connect");
        s.set_read_timeout(Some(LONG)).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        s
    })
}

/// One request/response over a connection to an echo server: whether the
/// message came back intact.
pub fn echo(s: &mut std::net::TcpStream, msg: &[u8]) -> bool {
    use std::io::{Read, Write};
    let mut back = vec![0u8; msg.len()];
    s.write_all(msg).is_ok() && s.read_exact(&mut back).is_ok() && back == msg
}
