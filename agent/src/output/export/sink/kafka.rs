//! Kafka, through rskafka: one produce per partition per batch, records keyed by node and flow.
//!
//! Takes: a batch of encoded records. Gives: Kafka records (key = the item key, value = the
//! encoded record, header `log_type`), the partition chosen by a hash of the key, so one flow's
//! records stay in order on one partition. Must never: report a batch delivered before every
//! partition's produce was acknowledged.

use std::{collections::BTreeMap, hash::Hasher};

use rskafka::{
    chrono::DateTime,
    client::{
        Client, ClientBuilder,
        partition::{Compression, PartitionClient, UnknownTopicHandling},
    },
    record::Record,
};

use super::{Outcome, SinkError};
use crate::output::export::{Item, LogType};

/// The Kafka sink.
pub struct KafkaSink {
    brokers: Vec<String>,
    topics: [String; LogType::ALL.len()],
    compression: Compression,
    client: Option<Client>,
    partitions: BTreeMap<(String, i32), PartitionClient>,
    counts: BTreeMap<String, i32>,
}

impl KafkaSink {
    /// A sink that connects on first use.
    pub fn new(brokers: Vec<String>, topics: [String; LogType::ALL.len()], compression: &str) -> Self {
        let compression = match compression {
            "gzip" => Compression::Gzip,
            "lz4" => Compression::Lz4,
            "snappy" => Compression::Snappy,
            "zstd" => Compression::Zstd,
            _ => Compression::NoCompression,
        };
        Self { brokers, topics, compression, client: None, partitions: BTreeMap::new(), counts: BTreeMap::new() }
    }

    fn transport(e: impl std::fmt::Display) -> SinkError {
        SinkError::Transport(format!("kafka: {e}"))
    }

    /// Sends one batch.
    pub async fn send(&mut self, log_type: LogType, items: &[Item]) -> Result<Outcome, SinkError> {
        let topic = self.topics[log_type.index()].clone();
        if self.client.is_none() {
            let client = ClientBuilder::new(self.brokers.clone())
                .client_id("flowaudit")
                .build()
                .await
                .map_err(Self::transport)?;
            self.client = Some(client);
        }
        let client = self.client.as_ref().expect("built");
        let partitions = match self.counts.get(&topic) {
            Some(n) => *n,
            None => {
                let topics = client.list_topics().await.map_err(Self::transport)?;
                let n = topics.iter().find(|t| t.name == topic).map_or(0, |t| t.partitions.len() as i32);
                if n == 0 {
                    return Err(SinkError::Transport(format!("kafka: topic {topic:?} does not exist")));
                }
                self.counts.insert(topic.clone(), n);
                n
            }
        };
        let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        let now = DateTime::from_timestamp_millis(jiff::Timestamp::now().as_millisecond()).unwrap_or_default();
        for item in items {
            let mut h = std::hash::DefaultHasher::new();
            h.write(item.key.as_bytes());
            let p = (h.finish() % partitions as u64) as i32;
            by_partition.entry(p).or_default().push(Record {
                key: Some(item.key.as_bytes().to_vec()),
                value: Some(item.line.clone()),
                headers: BTreeMap::from([("log_type".to_owned(), log_type.name().as_bytes().to_vec())]),
                timestamp: now,
            });
        }
        for (p, records) in by_partition {
            let key = (topic.clone(), p);
            if !self.partitions.contains_key(&key) {
                let pc = client
                    .partition_client(topic.clone(), p, UnknownTopicHandling::Error)
                    .await
                    .map_err(Self::transport)?;
                self.partitions.insert(key.clone(), pc);
            }
            let pc = &self.partitions[&key];
            if let Err(e) = pc.produce(records, self.compression).await {
                self.partitions.remove(&key);
                self.counts.remove(&topic);
                return Err(Self::transport(e));
            }
        }
        Ok(Outcome::default())
    }
}
