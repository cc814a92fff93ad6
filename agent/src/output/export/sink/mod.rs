//! The network sinks: one batch of encoded items in, what was delivered out.
//!
//! Takes: a batch (items of one log type, in order). Gives: an [`Outcome`] saying which items to
//! retry and which the sink refused for good, or a [`SinkError`] meaning the whole batch is to be
//! retried. Must never: report an item delivered that the sink did not accept, or retry forever
//! an item the sink refuses by its content.

use super::{Item, LogType};

mod clickhouse;
pub mod http;
mod kafka;
mod syslog;
pub mod tls;

pub use clickhouse::ClickHouseSink;
pub use http::HttpSink;
pub use kafka::KafkaSink;
pub use syslog::SyslogSink;

/// A whole batch could not be delivered (it is retried), or a sink is misconfigured.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Transport(String),
    /// The server answered with an error for the whole batch.
    #[error("server answered {status}: {body}")]
    Status {
        /// HTTP status or protocol error code.
        status: u16,
        /// The start of the answer.
        body: String,
    },
    /// A setting or secret file is unusable.
    #[error("{0}")]
    Config(String),
}

/// What became of a batch that reached the sink.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Indices of items to send again (throttled or a server fault).
    pub retry: Vec<usize>,
    /// Indices of items the sink refused for their content, with the reason.
    pub rejected: Vec<(usize, String)>,
    /// Items written again after a broken connection (they may arrive twice).
    pub resent: u64,
}

/// A sink of any type.
pub enum Sink {
    /// RFC 5424 syslog over UDP, TCP or TLS.
    Syslog(SyslogSink),
    /// Elasticsearch/OpenSearch, Splunk HEC, OTLP/HTTP.
    Http(HttpSink),
    /// Kafka.
    Kafka(KafkaSink),
    /// ClickHouse over HTTP.
    ClickHouse(ClickHouseSink),
}

impl Sink {
    /// Delivers one batch.
    pub async fn send(&mut self, log_type: LogType, items: &[Item]) -> Result<Outcome, SinkError> {
        match self {
            Sink::Syslog(s) => s.send(log_type, items).await,
            Sink::Http(s) => s.send(log_type, items).await,
            Sink::Kafka(s) => s.send(log_type, items).await,
            Sink::ClickHouse(s) => s.send(log_type, items).await,
        }
    }

    /// Drops any connection, so the next send starts afresh (after a timeout).
    pub fn reset(&mut self) {
        match self {
            Sink::Syslog(s) => s.reset(),
            Sink::Http(_) | Sink::Kafka(_) | Sink::ClickHouse(_) => {}
        }
    }
}
