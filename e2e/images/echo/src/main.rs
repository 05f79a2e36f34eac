//! weft-echo: the e2e test image's server. On one port (default 8080):
//! - HTTP `GET /` answers `<hostname> <client address>`;
//! - any other TCP stream is echoed back;
//! - UDP datagrams are answered with `<hostname> <client address>`.
//!
//! `weft-echo client HOST PORT [tcp|udp|udp-df SIZE]` connects and prints
//! the answer (the address the server saw), for tests run from inside pods;
//! `udp-df` sends SIZE bytes with fragmentation forbidden and, as an
//! application doing path-MTU discovery would, once more at the path MTU
//! the kernel learnt if that is smaller (a peer behind VXLAN).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// `$HOSTNAME` (Kubernetes sets it to the pod name), else /etc/hostname.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).ok())
        .unwrap_or_else(|| "unknown".into())
}

fn client_ip(addr: SocketAddr) -> String {
    // IPv4 clients of a dual-stack socket appear as ::ffff:a.b.c.d.
    match addr {
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().map(|v4| v4.to_string()).unwrap_or_else(|| v6.ip().to_string()),
        SocketAddr::V4(v4) => v4.ip().to_string(),
    }
}

fn serve_tcp(mut s: TcpStream, peer: SocketAddr) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
    let mut buf = [0u8; 65536];
    let Ok(n) = s.read(&mut buf) else { return };
    if buf[..n].starts_with(b"GET ") {
        let body = format!("{} {}\n", hostname(), client_ip(peer));
        let _ =
            write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}", body.len());
        return;
    }
    let mut chunk = &buf[..n];
    loop {
        if s.write_all(chunk).is_err() {
            return;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => chunk = &buf[..n],
        }
    }
}

fn server(port: u16) -> std::io::Result<()> {
    // One dual-stack socket per protocol; fall back to IPv4 where IPv6 is off.
    let tcp = TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port)))?;
    let udp = UdpSocket::bind(("::", port)).or_else(|_| UdpSocket::bind(("0.0.0.0", port)))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(format!("{} {}\n", hostname(), client_ip(peer)).as_bytes(), peer);
        }
    });
    eprintln!("weft-echo: serving HTTP, TCP echo and UDP on port {port} as {}", hostname());
    for conn in tcp.incoming() {
        let Ok(s) = conn else { continue };
        let Ok(peer) = s.peer_addr() else { continue };
        std::thread::spawn(move || serve_tcp(s, peer));
    }
    Ok(())
}

/// Forbids fragmentation, so a datagram larger than the path MTU fails
/// instead of being split: `udp-df SIZE` proves the path takes what the
/// kernel says it takes, with no blackhole.
fn set_dont_fragment(sock: &UdpSocket, v6: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, opt, val) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)
    };
    // SAFETY: setsockopt on our own socket with a correctly sized int.
    let rc = unsafe {
        libc::setsockopt(sock.as_raw_fd(), level, opt, (&val as *const i32).cast(), std::mem::size_of::<i32>() as u32)
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// The path MTU the kernel knows for the connected socket `sock`.
fn path_mtu(sock: &UdpSocket, v6: bool) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let (level, opt) = if v6 { (libc::IPPROTO_IPV6, libc::IPV6_MTU) } else { (libc::IPPROTO_IP, libc::IP_MTU) };
    let mut mtu: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as u32;
    // SAFETY: getsockopt on our own socket into a correctly sized int.
    let rc = unsafe { libc::getsockopt(sock.as_raw_fd(), level, opt, (&mut mtu as *mut i32).cast(), &mut len) };
    if rc == 0 { Ok(mtu.max(0) as usize) } else { Err(std::io::Error::last_os_error()) }
}

fn client(host: &str, port: u16, proto: &str, size: usize) -> std::io::Result<String> {
    let target = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let timeout = Duration::from_secs(5);
    if proto == "udp" || proto == "udp-df" {
        let sock = UdpSocket::bind(if host.contains(':') { "[::]:0" } else { "0.0.0.0:0" })?;
        sock.set_read_timeout(Some(timeout))?;
        let mut payload = vec![b'w'; size.max(4)];
        payload[..4].copy_from_slice(b"who\n");
        sock.connect(&target)?;
        let v6 = host.contains(':');
        if proto == "udp-df" {
            set_dont_fragment(&sock, v6)?;
        }
        let mut buf = [0u8; 1024];
        let first = sock.send(&payload).and_then(|_| sock.recv(&mut buf));
        let n = match first {
            Ok(n) => n,
            // Too big for the path: the node's path-MTU error set the socket's path MTU.
            Err(e) if proto == "udp-df" => {
                let header = if v6 { 48 } else { 28 };
                let fits = path_mtu(&sock, v6)?.saturating_sub(header);
                if fits >= payload.len() {
                    return Err(e);
                }
                payload.truncate(fits.max(4));
                sock.send(&payload)?;
                sock.recv(&mut buf)?
            }
            Err(e) => return Err(e),
        };
        return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&target)?.next().ok_or(std::io::ErrorKind::NotFound)?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("client") if args.len() >= 3 => {
            let port = args[2].parse().unwrap_or(8080);
            let size = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(4);
            client(&args[1], port, args.get(3).map(String::as_str).unwrap_or("tcp"), size)
                .map(|answer| println!("{answer}"))
        }
        Some("client") => {
            eprintln!("usage: weft-echo client HOST PORT [tcp|udp|udp-df SIZE]");
            std::process::exit(2);
        }
        port => server(port.and_then(|p| p.parse().ok()).unwrap_or(8080)),
    };
    if let Err(e) = result {
        eprintln!("weft-echo: {e}");
        std::process::exit(1);
    }
}
