//! RFC 5424 syslog over UDP, TCP (octet counting, RFC 6587) or TLS (RFC 5425).
//!
//! Takes: a batch of encoded records. Gives: one syslog message per record,
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG` with MSGID `flow` or `audit` and MSG
//! the encoded record. Must never: split a record over two messages, or forget what it wrote on a
//! connection that then broke.
//!
//! Syslog over TCP has no acknowledgement: bytes written may still be lost when the server goes
//! away. So frames written on a connection stay in an unconfirmed window until the connection
//! has been seen alive `CONFIRM_WINDOW` after them; when a connection turns out dead, the window
//! is written again on the next one (at-least-once: those records may arrive twice, and are
//! counted as resent). UDP has no such guarantee at all and is documented as such.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{Outcome, SinkError};
use crate::output::export::{Item, LogType, config::SyslogTransport};

/// How long after a write a live connection confirms it.
const CONFIRM_WINDOW: Duration = Duration::from_secs(1);
/// Largest message sent over UDP.
const MAX_DATAGRAM: usize = 65_000;

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The syslog sink.
pub struct SyslogSink {
    transport: SyslogTransport,
    address: String,
    app_name: String,
    facility: u8,
    host: String,
    pid: u32,
    tls: Option<Arc<ClientConfig>>,
    conn: Option<Conn>,
    unconfirmed: VecDeque<(Instant, Vec<u8>)>,
}

impl SyslogSink {
    /// A sink that connects on first use.
    pub fn new(
        transport: SyslogTransport,
        address: String,
        app_name: String,
        facility: u8,
        host: String,
        tls: Option<Arc<ClientConfig>>,
    ) -> Self {
        Self {
            transport,
            address,
            app_name,
            facility,
            host,
            pid: std::process::id(),
            tls,
            conn: None,
            unconfirmed: VecDeque::new(),
        }
    }

    /// Forgets the connection (after a timeout mid-write).
    pub fn reset(&mut self) {
        self.conn = None;
    }

    /// One RFC 5424 message for `line`.
    pub fn message(&self, log_type: LogType, line: &[u8], now: jiff::Timestamp) -> Vec<u8> {
        let (severity, msgid) = match log_type {
            LogType::Flows => (6, "flow"),
            LogType::Audit => (5, "audit"),
            LogType::Reports => (5, "report"),
        };
        let pri = u32::from(self.facility) * 8 + severity;
        let mut m = format!(
            "<{pri}>1 {} {} {} {} {msgid} - ",
            now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"),
            header_field(&self.host),
            header_field(&self.app_name),
            self.pid
        )
        .into_bytes();
        m.extend_from_slice(line);
        m
    }

    /// Sends one batch.
    pub async fn send(&mut self, log_type: LogType, items: &[Item]) -> Result<Outcome, SinkError> {
        let now = jiff::Timestamp::now();
        let mut outcome = Outcome::default();
        if self.transport == SyslogTransport::Udp {
            if self.conn.is_none() {
                let addr = resolve(&self.address).await?;
                let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("valid");
                let sock = UdpSocket::bind(bind).await.map_err(|e| SinkError::Transport(e.to_string()))?;
                sock.connect(addr).await.map_err(|e| SinkError::Transport(format!("{}: {e}", self.address)))?;
                self.conn = Some(Conn::Udp(sock));
            }
            let Some(Conn::Udp(sock)) = &self.conn else { unreachable!("set above") };
            for (i, item) in items.iter().enumerate() {
                let m = self.message(log_type, &item.line, now);
                if m.len() > MAX_DATAGRAM {
                    outcome.rejected.push((i, format!("{} bytes: too large for a UDP datagram", m.len())));
                    continue;
                }
                if let Err(e) = sock.send(&m).await {
                    self.conn = None;
                    return Err(SinkError::Transport(format!("{}: {e}", self.address)));
                }
            }
            return Ok(outcome);
        }

        let mut frames = Vec::with_capacity(items.len() * 512);
        for item in items {
            let m = self.message(log_type, &item.line, now);
            frames.extend_from_slice(format!("{} ", m.len()).as_bytes());
            frames.extend_from_slice(&m);
        }
        if let Some(conn) = &mut self.conn
            && !alive(conn).await
        {
            tracing::warn!(message = "Syslog connection closed by the server; reconnecting.", address = %self.address);
            self.conn = None;
        }
        if self.conn.is_none() {
            let mut conn = self.connect().await?;
            let resend: Vec<u8> = self.unconfirmed.iter().flat_map(|(_, f)| f.iter().copied()).collect();
            if !resend.is_empty() {
                write_all(&mut conn, &resend)
                    .await
                    .map_err(|e| SinkError::Transport(format!("{}: {e}", self.address)))?;
                outcome.resent = self.unconfirmed.iter().map(|(_, f)| count_frames(f)).sum();
            }
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected");
        if let Err(e) = write_all(conn, &frames).await {
            self.conn = None;
            return Err(SinkError::Transport(format!("{}: {e}", self.address)));
        }
        let at = Instant::now();
        while self.unconfirmed.front().is_some_and(|(t, _)| at.duration_since(*t) > CONFIRM_WINDOW) {
            self.unconfirmed.pop_front();
        }
        self.unconfirmed.push_back((at, frames));
        Ok(outcome)
    }

    async fn connect(&self) -> Result<Conn, SinkError> {
        let addr = resolve(&self.address).await?;
        let tcp = TcpStream::connect(addr).await.map_err(|e| SinkError::Transport(format!("{}: {e}", self.address)))?;
        let _ = tcp.set_nodelay(true);
        match (&self.tls, self.transport) {
            (Some(config), SyslogTransport::Tls) => {
                let host = self.address.rsplit_once(':').map_or(self.address.as_str(), |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
                let name = ServerName::try_from(host).map_err(|e| SinkError::Config(e.to_string()))?;
                let tls = TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| SinkError::Transport(format!("{}: TLS: {e}", self.address)))?;
                Ok(Conn::Tls(Box::new(tls)))
            }
            _ => Ok(Conn::Tcp(tcp)),
        }
    }
}

/// HOSTNAME and APP-NAME are printable US-ASCII without spaces, at most 255/48 characters.
fn header_field(v: &str) -> String {
    let s: String = v.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    if s.is_empty() { "-".into() } else { s }
}

fn count_frames(frames: &[u8]) -> u64 {
    let mut n = 0;
    let mut rest = frames;
    while let Some(sp) = rest.iter().position(|&b| b == b' ') {
        let Some(len) = std::str::from_utf8(&rest[..sp]).ok().and_then(|l| l.parse::<usize>().ok()) else { break };
        rest = rest.get(sp + 1 + len..).unwrap_or_default();
        n += 1;
    }
    n
}

async fn resolve(address: &str) -> Result<SocketAddr, SinkError> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| SinkError::Transport(format!("{address}: {e}")))?
        .next()
        .ok_or_else(|| SinkError::Transport(format!("{address}: no address")))
}

async fn write_all(conn: &mut Conn, buf: &[u8]) -> std::io::Result<()> {
    match conn {
        Conn::Tcp(s) => write_flush(s, buf).await,
        Conn::Tls(s) => write_flush(s.as_mut(), buf).await,
        Conn::Udp(_) => Ok(()),
    }
}

async fn write_flush<S: AsyncWrite + Unpin>(s: &mut S, buf: &[u8]) -> std::io::Result<()> {
    s.write_all(buf).await?;
    s.flush().await
}

/// A stream is alive when a read would block; an end of stream or an error means the server
/// closed it. Whatever the server sent is discarded (syslog servers send nothing).
async fn alive(conn: &mut Conn) -> bool {
    async fn probe<S: AsyncRead + Unpin>(s: &mut S) -> bool {
        let mut buf = [0u8; 512];
        loop {
            // Polled once: a pending read is a live, quiet connection.
            match tokio::time::timeout(Duration::ZERO, s.read(&mut buf)).await {
                Err(_) => return true,
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(_)) => continue,
            }
        }
    }
    match conn {
        Conn::Tcp(s) => probe(s).await,
        Conn::Tls(s) => probe(s.as_mut()).await,
        Conn::Udp(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_rfc5424_with_octet_counting_frames_countable() {
        let s = SyslogSink::new(SyslogTransport::Tcp, "h:1".into(), "flowaudit".into(), 16, "node 1".into(), None);
        let t: jiff::Timestamp = "2026-11-27T01:02:03.456789Z".parse().unwrap();
        let m = s.message(LogType::Flows, br#"{"a":1}"#, t);
        let text = String::from_utf8(m).unwrap();
        let pid = std::process::id();
        assert_eq!(text, format!("<134>1 2026-11-27T01:02:03.456789Z node1 flowaudit {pid} flow - {{\"a\":1}}"));
        let a = s.message(LogType::Audit, b"x", t);
        assert!(a.starts_with(b"<133>1 "), "audit is notice");
        let frames = [b"3 abc".as_slice(), b"10 0123456789", b"1 z"].concat();
        assert_eq!(count_frames(&frames), 3);
    }
}
