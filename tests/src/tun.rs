//! A point-to-point link between two namespaces made of two tun devices and
//! a user-space forwarder: every IP packet one side's kernel sends out of
//! its tun device is written into the other's. That is exactly the kind of
//! interface that has no Ethernet header (`ARPHRD_NONE`), as WireGuard and
//! Tailscale devices are, on a kernel without any tunnel driver.
//!
//! The devices live as long as the test holds their file descriptors:
//! dropping the [`TunPair`] stops the forwarder and closes them, which
//! deletes them.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use crate::netns::Netns;

/// Which end of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

pub struct TunPair {
    a: Arc<OwnedFd>,
    b: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    forwarder: Option<JoinHandle<()>>,
}

impl TunPair {
    /// Creates tun device `a_name` in `a` and `b_name` in `b`, brings them
    /// up, and starts forwarding between them.
    pub fn new(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Self {
        let fa = Arc::new(open_tun(a, a_name));
        let fb = Arc::new(open_tun(b, b_name));
        a.ip(&["link", "set", a_name, "up"]);
        b.ip(&["link", "set", b_name, "up"]);
        let stop = Arc::new(AtomicBool::new(false));
        let forwarder = {
            let (fa, fb, stop) = (fa.clone(), fb.clone(), stop.clone());
            std::thread::spawn(move || forward(&fa, &fb, &stop))
        };
        Self {
            a: fa,
            b: fb,
            stop,
            forwarder: Some(forwarder),
        }
    }

    /// Hands `packet` (an IP packet, or any bytes) to `side`'s kernel as if
    /// it had arrived on that side's tun device.
    pub fn inject(&self, side: Side, packet: &[u8]) {
        let fd = match side {
            Side::A => self.a.as_raw_fd(),
            Side::B => self.b.as_raw_fd(),
        };
        let n = write(fd, packet);
        assert_eq!(
            n,
            packet.len() as isize,
            "writing to the tun device: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for TunPair {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.forwarder.take() {
            let _ = h.join();
        }
    }
}

/// Opens `/dev/net/tun` as a new tun device `name` inside `ns` (the device
/// is created in the namespace of the thread that asks for it).
fn open_tun(ns: &Netns, name: &str) -> OwnedFd {
    let name = CString::new(name).expect("device name");
    ns.run(move || {
        let path = CString::new("/dev/net/tun").expect("path");
        // SAFETY: open(2) with a valid path; the result is checked.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK) };
        assert!(
            fd >= 0,
            "open /dev/net/tun: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain data; all zeroes is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *d = *s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads the ifreq we pass, which outlives the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        fd
    })
}

fn write(fd: RawFd, data: &[u8]) -> isize {
    // SAFETY: writing from a valid buffer of `data.len()` bytes.
    unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) }
}

/// Copies packets both ways until `stop`, waking every 50 ms to look at it.
fn forward(a: &OwnedFd, b: &OwnedFd, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll over an array of two pollfds we own.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) };
        if n <= 0 {
            continue;
        }
        for (from, to) in [(a, b), (b, a)] {
            // Drain what is queued; a non-blocking read ends with EAGAIN.
            loop {
                // SAFETY: reading into a buffer we own, at most its length.
                let got =
                    unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if got <= 0 {
                    break;
                }
                // A packet the other side refuses (it is down) is lost, as
                // on a wire.
                let _ = write(to.as_raw_fd(), &buf[..got as usize]);
            }
        }
    }
}
