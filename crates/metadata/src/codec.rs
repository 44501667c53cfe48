//! The metadata records as bytes, for the quorum's log and snapshots: a version byte, a
//! count, then each record as a type byte and its fields, big-endian. Decoding trusts no
//! length: a damaged or hostile entry is refused, never a panic.

use std::collections::BTreeMap;

use strom_storage::reader::{Reader, put_bytes, put_opt_string, put_string};

use crate::image::{BrokerInfo, Endpoint, PartitionInfo, Record};

const VERSION: u8 = 1;

fn put_ids(out: &mut Vec<u8>, ids: &[i32]) {
    out.extend_from_slice(&(ids.len() as i32).to_be_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_be_bytes());
    }
}

fn ids(r: &mut Reader<'_>) -> Option<Vec<i32>> {
    let n = r.count(4)?;
    (0..n).map(|_| r.i32()).collect()
}

fn put_partition(out: &mut Vec<u8>, p: &PartitionInfo) {
    put_ids(out, &p.replicas);
    put_ids(out, &p.isr);
    out.extend_from_slice(&p.leader.to_be_bytes());
    out.extend_from_slice(&p.leader_epoch.to_be_bytes());
    out.extend_from_slice(&p.partition_epoch.to_be_bytes());
}

fn partition(r: &mut Reader<'_>) -> Option<PartitionInfo> {
    Some(PartitionInfo {
        replicas: ids(r)?.into(),
        isr: ids(r)?.into(),
        leader: r.i32()?,
        leader_epoch: r.i32()?,
        partition_epoch: r.i32()?,
        ..PartitionInfo::default()
    })
}

fn put_configs(out: &mut Vec<u8>, configs: &BTreeMap<String, String>) {
    out.extend_from_slice(&(configs.len() as i32).to_be_bytes());
    for (k, v) in configs {
        put_string(out, k);
        put_bytes(out, v.as_bytes());
    }
}

fn configs(r: &mut Reader<'_>) -> Option<BTreeMap<String, String>> {
    // A key and a value take at least 6 bytes.
    let n = r.count(6)?;
    let mut configs = BTreeMap::new();
    for _ in 0..n {
        let k = r.string()?;
        let v = String::from_utf8(r.bytes()?).ok()?;
        configs.insert(k, v);
    }
    Some(configs)
}

pub fn encode(records: &[Record]) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for r in records {
        match r {
            Record::RegisterBroker(b) => {
                // Type 0, without incarnation and epoch, is still read: logs written before
                // brokers had epochs hold it.
                // Type 7 is type 9 without endpoints: still read.
                out.push(9);
                out.extend_from_slice(&b.id.to_be_bytes());
                put_string(&mut out, &b.host);
                out.extend_from_slice(&b.port.to_be_bytes());
                put_opt_string(&mut out, b.rack.as_deref());
                out.push(b.fenced as u8);
                out.extend_from_slice(&b.incarnation);
                out.extend_from_slice(&b.epoch.to_be_bytes());
                out.extend_from_slice(&(b.endpoints.len() as i32).to_be_bytes());
                for e in &b.endpoints {
                    put_string(&mut out, &e.name);
                    put_string(&mut out, &e.host);
                    out.extend_from_slice(&e.port.to_be_bytes());
                }
            }
            Record::Topic { name, id } => {
                out.push(1);
                put_string(&mut out, name);
                out.extend_from_slice(id);
            }
            Record::Partition {
                topic,
                partition,
                info,
            } => {
                // Type 8 adds a reassignment in progress; without one, type 2 as before.
                out.push(if info.reassigning() { 8 } else { 2 });
                put_string(&mut out, topic);
                out.extend_from_slice(&partition.to_be_bytes());
                put_partition(&mut out, info);
                if info.reassigning() {
                    put_ids(&mut out, info.adding());
                    put_ids(&mut out, info.removing());
                }
            }
            Record::TopicConfigs { topic, configs } => {
                out.push(3);
                put_string(&mut out, topic);
                put_configs(&mut out, configs);
            }
            Record::BrokerConfigs { broker, configs } => {
                out.push(10);
                out.extend_from_slice(&broker.to_be_bytes());
                put_configs(&mut out, configs);
            }
            Record::RemoveTopic { name } => {
                out.push(4);
                put_string(&mut out, name);
            }
            Record::BrokerFencing { id, fenced } => {
                out.push(5);
                out.extend_from_slice(&id.to_be_bytes());
                out.push(*fenced as u8);
            }
            Record::ProducerIds {
                broker,
                next_producer_id,
            } => {
                out.push(6);
                out.extend_from_slice(&broker.to_be_bytes());
                out.extend_from_slice(&next_producer_id.to_be_bytes());
            }
        }
    }
    out
}

/// The records of `bytes`, or `None` if they are damaged or of an unknown version.
pub fn decode(bytes: &[u8]) -> Option<Vec<Record>> {
    let mut r = Reader::new(bytes);
    if r.u8()? != VERSION {
        return None;
    }
    let n = r.u32()? as usize;
    // Each record takes at least 5 bytes: a hostile count sizes nothing.
    let mut out = Vec::with_capacity(n.min(r.rest().len() / 5));
    for _ in 0..n {
        let record = match r.u8()? {
            0 => Record::RegisterBroker(BrokerInfo {
                id: r.i32()?,
                host: r.string()?,
                port: u16::from_be_bytes(r.take(2)?.try_into().ok()?),
                rack: r.opt_string()?,
                fenced: r.u8()? != 0,
                ..BrokerInfo::default()
            }),
            kind @ (7 | 9) => {
                let mut b = BrokerInfo {
                    id: r.i32()?,
                    host: r.string()?,
                    port: u16::from_be_bytes(r.take(2)?.try_into().ok()?),
                    rack: r.opt_string()?,
                    fenced: r.u8()? != 0,
                    incarnation: r.take(16)?.try_into().ok()?,
                    epoch: r.i64()?,
                    endpoints: Vec::new(),
                };
                if kind == 9 {
                    // Each endpoint takes at least 10 bytes.
                    let n = r.count(10)?;
                    for _ in 0..n {
                        b.endpoints.push(Endpoint {
                            name: r.string()?,
                            host: r.string()?,
                            port: u16::from_be_bytes(r.take(2)?.try_into().ok()?),
                        });
                    }
                }
                Record::RegisterBroker(b)
            }
            1 => Record::Topic {
                name: r.string()?,
                id: r.take(16)?.try_into().ok()?,
            },
            2 => Record::Partition {
                topic: r.string()?,
                partition: r.i32()?,
                info: partition(&mut r)?,
            },
            8 => {
                let topic = r.string()?;
                let index = r.i32()?;
                let mut info = partition(&mut r)?;
                let adding = ids(&mut r)?;
                let removing = ids(&mut r)?;
                info.set_reassignment(adding, removing);
                Record::Partition {
                    topic,
                    partition: index,
                    info,
                }
            }
            3 => Record::TopicConfigs {
                topic: r.string()?,
                configs: configs(&mut r)?,
            },
            10 => Record::BrokerConfigs {
                broker: r.i32()?,
                configs: configs(&mut r)?,
            },
            4 => Record::RemoveTopic { name: r.string()? },
            5 => Record::BrokerFencing {
                id: r.i32()?,
                fenced: r.u8()? != 0,
            },
            6 => Record::ProducerIds {
                broker: r.i32()?,
                next_producer_id: r.i64()?,
            },
            _ => return None,
        };
        out.push(record);
    }
    r.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Record> {
        vec![
            Record::RegisterBroker(BrokerInfo {
                id: 3,
                host: "h3".into(),
                port: 9092,
                rack: Some("r1".into()),
                fenced: true,
                incarnation: [9; 16],
                epoch: 12,
                endpoints: vec![
                    Endpoint {
                        name: "PLAINTEXT".into(),
                        host: "h3".into(),
                        port: 9092,
                    },
                    Endpoint {
                        name: "EXTERNAL".into(),
                        host: "public.example".into(),
                        port: 29092,
                    },
                ],
            }),
            Record::RegisterBroker(BrokerInfo {
                id: 4,
                host: "h4".into(),
                port: 1,
                rack: None,
                fenced: false,
                incarnation: [0; 16],
                epoch: 0,
                endpoints: vec![],
            }),
            Record::Topic {
                name: "orders".into(),
                id: [7; 16],
            },
            Record::Partition {
                topic: "orders".into(),
                partition: 2,
                info: PartitionInfo {
                    replicas: vec![3, 4].into(),
                    isr: vec![4].into(),
                    leader: 4,
                    leader_epoch: 9,
                    partition_epoch: 11,
                    ..PartitionInfo::default()
                },
            },
            Record::Partition {
                topic: "orders".into(),
                partition: 3,
                info: PartitionInfo {
                    replicas: vec![5, 3, 4].into(),
                    isr: vec![3, 4].into(),
                    leader: 3,
                    leader_epoch: 2,
                    partition_epoch: 4,
                    reassignment: Some(Box::new(crate::image::Reassignment {
                        adding: vec![5],
                        removing: vec![4],
                    })),
                },
            },
            Record::TopicConfigs {
                topic: "orders".into(),
                configs: [("retention.ms".to_string(), "1000".to_string())].into(),
            },
            Record::RemoveTopic { name: "old".into() },
            Record::BrokerFencing {
                id: 3,
                fenced: false,
            },
            Record::ProducerIds {
                broker: 4,
                next_producer_id: 5000,
            },
            Record::BrokerConfigs {
                broker: crate::image::CLUSTER_DEFAULT,
                configs: [("log.retention.ms".to_string(), "1000".to_string())].into(),
            },
            Record::BrokerConfigs {
                broker: 2,
                configs: BTreeMap::new(),
            },
        ]
    }

    #[test]
    fn every_record_round_trips() {
        let records = every_kind();
        assert_eq!(decode(&encode(&records)), Some(records));
        assert_eq!(decode(&encode(&[])), Some(vec![]));
    }

    #[test]
    fn registrations_written_before_broker_epochs_are_still_read() {
        let mut old = vec![VERSION, 0, 0, 0, 1, 0];
        old.extend_from_slice(&5i32.to_be_bytes());
        put_string(&mut old, "h");
        old.extend_from_slice(&9092u16.to_be_bytes());
        put_opt_string(&mut old, None);
        old.push(0);
        let expected = BrokerInfo {
            id: 5,
            host: "h".into(),
            port: 9092,
            ..BrokerInfo::default()
        };
        assert_eq!(decode(&old), Some(vec![Record::RegisterBroker(expected)]));
    }

    #[test]
    fn damaged_bytes_are_refused_not_panicked_on() {
        let bytes = encode(&every_kind());
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode(&extra), None);
        let mut version = bytes.clone();
        version[0] = 2;
        assert_eq!(decode(&version), None);
        // A count of 4 billion records in a few bytes allocates nothing large.
        assert_eq!(decode(&[1, 0xff, 0xff, 0xff, 0xff, 9]), None);
        // Every single-byte change decodes to something or nothing, never a panic.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = decode(&b);
        }
    }
}
