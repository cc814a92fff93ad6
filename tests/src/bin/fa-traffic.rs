//! Traffic generator for the lab: known TCP and UDP exchanges with fixed source ports, so a test
//! knows every 5-tuple in advance. Prints a JSON tally of what it sent and received.
//!
//! ```text
//! fa-traffic tcp-serve ADDR PORT REPLY_BYTES      # per connection: read to EOF, send REPLY_BYTES
//! fa-traffic tcp-send ADDR PORT SPORT BYTES       # connect from SPORT, send, half-close, read to EOF
//! fa-traffic tcp-refused ADDR PORT SPORT          # connect; succeeds when refused
//! fa-traffic tcp-blocked ADDR PORT SPORT          # connect; succeeds when the attempt times out
//! fa-traffic udp-echo ADDR PORT                   # echo every datagram
//! fa-traffic udp-sink ADDR PORT                   # receive datagrams, send nothing back
//! fa-traffic udp-send ADDR PORT SPORT COUNT SIZE [ECHO] # COUNT datagrams; ECHO=1 waits for each echo
//! fa-traffic udp-spray ADDR FIRST_PORT PORTS SPORT # one 64-byte datagram to each of PORTS ports
//! fa-traffic udp-flood ADDR FIRST_PORT PORTS FIRST_SPORT SPORTS # PORTS x SPORTS new flows, fast
//! fa-traffic tcp-accept ADDR PORT THREADS         # accept loop: per connection read to EOF, close
//! fa-traffic tcp-churn ADDR PORT THREADS SECONDS [MAX [FIRST_SPORT]]
//!                                                 # connect + close until SECONDS or MAX in all;
//!                                                 # with FIRST_SPORT, connection k binds FIRST_SPORT+k
//! ```
//!
//! `udp-flood` (IPv4) sends one 18-byte datagram from each of SPORTS source ports to each of PORTS
//! destination ports (`sendmmsg`, 1,024 per call): PORTS x SPORTS distinct 5-tuples, one packet
//! each, as fast as one core can; it prints the datagrams sent and the rate.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("argument {i} ({what}) missing or invalid"))
}

fn socket(addr: &SocketAddr, ty: Type, proto: Protocol) -> Socket {
    let s = Socket::new(Domain::for_address(*addr), ty, Some(proto)).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s
}

fn bound(ip: IpAddr, sport: u16, target: &SocketAddr, ty: Type, proto: Protocol) -> Socket {
    let s = socket(target, ty, proto);
    let local =
        SocketAddr::new(if ip.is_ipv4() { "0.0.0.0".parse().expect("ip") } else { "::".parse().expect("ip") }, sport);
    s.bind(&local.into()).expect("bind source port");
    s
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    match mode {
        "tcp-serve" => {
            let ip: IpAddr = arg(&args, 2, "addr");
            let port: u16 = arg(&args, 3, "port");
            let reply: usize = arg(&args, 4, "reply bytes");
            let listener = TcpListener::bind((ip, port)).expect("listen");
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                    }
                    let _ = stream.write_all(&vec![b'r'; reply]);
                });
            }
        }
        "tcp-send" => {
            let ip: IpAddr = arg(&args, 2, "addr");
            let port: u16 = arg(&args, 3, "port");
            let sport: u16 = arg(&args, 4, "sport");
            let bytes: usize = arg(&args, 5, "bytes");
            let target = SocketAddr::new(ip, port);
            let s = bound(ip, sport, &target, Type::STREAM, Protocol::TCP);
            s.connect_timeout(&target.into(), Duration::from_secs(5)).expect("connect");
            let mut stream: TcpStream = s.into();
            let chunk = vec![b's'; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                stream.write_all(&chunk[..n]).expect("send");
                left -= n;
            }
            stream.shutdown(std::net::Shutdown::Write).expect("half-close");
            let mut received = Vec::new();
            stream.read_to_end(&mut received).expect("read reply");
            println!("{{\"sent\":{bytes},\"received\":{}}}", received.len());
        }
        "tcp-refused" => {
            let ip: IpAddr = arg(&args, 2, "addr");
            let port: u16 = arg(&args, 3, "port");
            let sport: u16 = arg(&args, 4, "sport");
            let target = SocketAddr::new(ip, port);
            let s = bound(ip, sport, &target, Type::STREAM, Protocol::TCP);
            match s.connect_timeout(&target.into(), Duration::from_secs(5)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => println!("{{\"refused\":true}}"),
                other => panic!("expected a refused connection, got {other:?}"),
            }
        }
        "tcp-blocked" => {
            // A connection that something drops: the attempt times out.
            let ip: IpAddr = arg(&args, 2, "addr");
            let port: u16 = arg(&args, 3, "port");
            let sport: u16 = arg(&args, 4, "sport");
            let target = SocketAddr::new(ip, port);
            let s = bound(ip, sport, &target, Type::STREAM, Protocol::TCP);
            match s.connect_timeout(&target.into(), Duration::from_millis(1500)) {
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock => {
                    println!("{{\"blocked\":true}}")
                }
                other => panic!("expected a dropped connection attempt, got {other:?}"),
            }
        }
        "udp-echo" => {
            let ip: IpAddr = arg(&args, 2, "addr");
            let port: u16 = arg(&args, 3, "port");
            let sock = UdpSocket::bind((ip, port)).expect("bind");
            let mut buf = vec![0u8; 65536];
            loop {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        }
        "udp-sink" => {
            let ip: IpAddr = arg(&args, 2, "addr");
            let port: u16 = arg(&args, 3, "port");
            let sock = UdpSocket::bind((ip, port)).expect("bind");
            let mut buf = vec![0u8; 65536];
            loop {
                let _ = sock.recv_from(&mut buf);
            }
        }
        "udp-send" => {
            let ip: IpAddr = arg(&args, 2, "addr");
            let port: u16 = arg(&args, 3, "port");
            let sport: u16 = arg(&args, 4, "sport");
            let count: usize = arg(&args, 5, "count");
            let size: usize = arg(&args, 6, "size");
            let echo = args.get(7).is_some_and(|s| s == "1");
            let target = SocketAddr::new(ip, port);
            let sock: UdpSocket = bound(ip, sport, &target, Type::DGRAM, Protocol::UDP).into();
            sock.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
            let payload = vec![b'u'; size];
            let mut received = 0;
            let mut buf = vec![0u8; 65536];
            for _ in 0..count {
                sock.send_to(&payload, target).expect("send");
                if echo {
                    let (n, _) = sock.recv_from(&mut buf).expect("echo reply");
                    received += n;
                }
            }
            println!("{{\"sent\":{},\"received\":{received}}}", count * size);
        }
        "udp-spray" => {
            let ip: IpAddr = arg(&args, 2, "addr");
            let first: u16 = arg(&args, 3, "first port");
            let ports: u16 = arg(&args, 4, "ports");
            let sport: u16 = arg(&args, 5, "sport");
            let target = SocketAddr::new(ip, first);
            let sock: UdpSocket = bound(ip, sport, &target, Type::DGRAM, Protocol::UDP).into();
            let payload = [b'x'; 64];
            let mut sent = 0u64;
            for p in 0..ports {
                if sock.send_to(&payload, SocketAddr::new(ip, first + p)).is_ok() {
                    sent += 1;
                }
            }
            println!("{{\"datagrams\":{sent}}}");
        }
        "udp-flood" => {
            let ip: std::net::Ipv4Addr = arg(&args, 2, "IPv4 addr");
            let first: u16 = arg(&args, 3, "first port");
            let ports: u16 = arg(&args, 4, "ports");
            let first_sport: u16 = arg(&args, 5, "first sport");
            let sports: u16 = arg(&args, 6, "sports");
            let target = SocketAddr::new(IpAddr::V4(ip), first);
            let socks: Vec<UdpSocket> = (0..sports)
                .map(|i| bound(IpAddr::V4(ip), first_sport + i, &target, Type::DGRAM, Protocol::UDP).into())
                .collect();
            let started = std::time::Instant::now();
            let sent: u64 = socks.iter().map(|s| flood(s, ip, first, ports)).sum();
            let seconds = started.elapsed().as_secs_f64();
            println!("{{\"datagrams\":{sent}}}");
            eprintln!("udp-flood: {sent} datagrams in {seconds:.2} s ({:.0} packets/s)", sent as f64 / seconds);
        }
        "tcp-accept" => {
            // The server of the short-connection rate: THREADS threads accept on one listener and
            // handle each connection inline (no thread per connection).
            let ip: IpAddr = arg(&args, 2, "addr");
            let port: u16 = arg(&args, 3, "port");
            let threads: usize = arg(&args, 4, "threads");
            let target = SocketAddr::new(ip, port);
            let s = socket(&target, Type::STREAM, Protocol::TCP);
            s.bind(&target.into()).expect("bind");
            s.listen(4096).expect("listen");
            let listener: TcpListener = s.into();
            let workers: Vec<_> = (0..threads.max(1))
                .map(|_| {
                    let listener = listener.try_clone().expect("listener");
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 512];
                        loop {
                            let Ok((mut stream, _)) = listener.accept() else { continue };
                            while stream.read(&mut buf).is_ok_and(|n| n > 0) {}
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.join();
            }
        }
        "tcp-churn" => {
            // The short-connection rate: THREADS threads each connect and close (the client closes
            // first) in a loop, until SECONDS have passed or MAX connections are made in all.
            let ip: IpAddr = arg(&args, 2, "addr");
            let port: u16 = arg(&args, 3, "port");
            let threads: usize = arg(&args, 4, "threads");
            let seconds: f64 = arg(&args, 5, "seconds");
            let max: u64 = args.get(6).map(|_| arg(&args, 6, "max")).unwrap_or(u64::MAX);
            // Distinct source ports make every connection a distinct 5-tuple (no port reuse).
            let first_sport: Option<u16> = args.get(7).map(|_| arg(&args, 7, "first sport"));
            if let Some(first) = first_sport {
                assert!(first as u64 + max <= 65536, "FIRST_SPORT + MAX exceeds the port range");
            }
            let next_port = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let target = SocketAddr::new(ip, port);
            let made = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let failed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let start = std::time::Instant::now();
            let deadline = start + Duration::from_secs_f64(seconds);
            let workers: Vec<_> = (0..threads.max(1))
                .map(|_| {
                    let (made, failed, next_port) = (made.clone(), failed.clone(), next_port.clone());
                    std::thread::spawn(move || {
                        use std::sync::atomic::Ordering::Relaxed;
                        while std::time::Instant::now() < deadline {
                            // Claim a slot first so that MAX is never exceeded.
                            if made.fetch_add(1, Relaxed) >= max {
                                made.fetch_sub(1, Relaxed);
                                break;
                            }
                            let connected = match first_sport {
                                None => TcpStream::connect_timeout(&target, Duration::from_secs(5)).map(drop),
                                Some(first) => {
                                    let sport = first + next_port.fetch_add(1, Relaxed) as u16;
                                    let s = bound(ip, sport, &target, Type::STREAM, Protocol::TCP);
                                    s.connect_timeout(&target.into(), Duration::from_secs(5))
                                }
                            };
                            if connected.is_err() {
                                made.fetch_sub(1, Relaxed);
                                failed.fetch_add(1, Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("churn thread");
            }
            let elapsed = start.elapsed().as_secs_f64();
            println!(
                "{{\"connections\":{},\"failed\":{},\"seconds\":{elapsed:.3}}}",
                made.load(std::sync::atomic::Ordering::Relaxed),
                failed.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        _ => {
            eprintln!(
                "usage: fa-traffic tcp-serve|tcp-send|tcp-refused|udp-echo|udp-sink|udp-send|udp-spray|udp-flood|tcp-accept|tcp-churn ..."
            );
            std::process::exit(2);
        }
    }
}

/// Sends one 18-byte datagram from `sock` to each of `ports` ports of `ip` from `first`, with
/// `sendmmsg`; returns how many the kernel took.
fn flood(sock: &UdpSocket, ip: std::net::Ipv4Addr, first: u16, ports: u16) -> u64 {
    use std::os::fd::AsRawFd as _;
    const BATCH: usize = 1024;
    let payload = [b'f'; 18];
    let mut sent = 0u64;
    let mut port = u32::from(first);
    let end = u32::from(first) + u32::from(ports);
    while port < end {
        let n = (end - port).min(BATCH as u32) as usize;
        // SAFETY: sockaddr_in, iovec and mmsghdr are plain C structs; all-zero is valid for each.
        let mut addrs: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; n];
        let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() };
        let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; n];
        for (i, (a, m)) in addrs.iter_mut().zip(msgs.iter_mut()).enumerate() {
            a.sin_family = libc::AF_INET as libc::sa_family_t;
            a.sin_port = ((port + i as u32) as u16).to_be();
            a.sin_addr.s_addr = u32::from(ip).to_be();
            m.msg_hdr.msg_name = (a as *mut libc::sockaddr_in).cast();
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let mut done = 0;
        while done < n {
            // SAFETY: `msgs[done..]` point to live addresses and the payload for the call.
            let rc = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs[done..].as_mut_ptr(), (n - done) as u32, 0) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("sendmmsg: {e}");
            }
            done += rc as usize;
        }
        sent += n as u64;
        port += n as u32;
    }
    sent
}
