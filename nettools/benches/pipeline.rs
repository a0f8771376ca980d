//! Decoding and aggregating ring-buffer events in userspace, on one core: what the collector
//! does for every event the kernel sends. `cargo xtask bench` runs it and reports events per
//! second next to the end-to-end pipeline figures (BENCHMARKS.md, section 6).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nettools::collect::{Event, aggregate::Aggregate, decode};
use nettools_common::{
    drops::{DropEvent, DropKey},
    event::{EventHeader, kind},
    flow::{AF_INET, Flow},
    latency::{HandshakeEvent, IcmpEvent},
};

/// The bytes of one event, as the ring buffer holds them.
fn bytes<T: Copy>(event: &T) -> Vec<u8> {
    // SAFETY: T is a plain #[repr(C)] event; its bytes are what the kernel writes.
    unsafe { std::slice::from_raw_parts((event as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn flow(sport: u16) -> Flow {
    let mut f = Flow {
        family: AF_INET,
        l4_proto: 17,
        sport,
        dport: 9000,
        ..Flow::default()
    };
    f.saddr[..4].copy_from_slice(&[10, 241, 0, 1]);
    f.daddr[..4].copy_from_slice(&[10, 241, 0, 2]);
    f
}

/// Drops in 8 namespaces, 16 locations, flows over 60 000 source ports: a storm of many flows.
fn drops(n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            bytes(&DropEvent {
                header: EventHeader {
                    kind: kind::DROP,
                    cpu: i % 2,
                    ts_ns: u64::from(i) * 1000,
                },
                key: DropKey {
                    netns: 4_026_532_000 + i % 8,
                    reason: 2 + i % 3,
                    location: 0xffff_ffff_8100_0000 + u64::from(i % 16) * 0x40,
                },
                ifindex: 1 + i % 8,
                protocol: 0x0800,
                stack_id: -1,
                flow: flow(1 + (i % 60_000) as u16),
                ..DropEvent::default()
            })
        })
        .collect()
}

/// Handshakes and pings on 8 interfaces, with latencies spread over the histograms' range.
fn latencies(n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let header = |k| EventHeader {
                kind: k,
                cpu: 0,
                ts_ns: u64::from(i) * 1000,
            };
            if i % 2 == 0 {
                bytes(&HandshakeEvent {
                    header: header(kind::HANDSHAKE),
                    ifindex: 1 + i % 8,
                    latency_ns: 10_000 + u64::from(i % 1000) * 50_000,
                    flow: flow(1 + (i % 60_000) as u16),
                    syns: 1,
                    ..HandshakeEvent::default()
                })
            } else {
                bytes(&IcmpEvent {
                    header: header(kind::ICMP),
                    ifindex: 1 + i % 8,
                    latency_ns: 20_000 + u64::from(i % 1000) * 30_000,
                    flow: flow(0),
                    ..IcmpEvent::default()
                })
            }
        })
        .collect()
}

fn aggregate(agg: &mut Aggregate, record: &[u8]) {
    match decode(record) {
        Ok(Event::Drop(d)) => agg.add_drop(&d),
        Ok(Event::Handshake(h)) => agg.latency.add_handshake(&h),
        Ok(Event::Icmp(i)) => agg.latency.add_icmp(&i),
        Ok(_) => {}
        Err(_) => agg.undecodable += 1,
    }
}

fn decode_aggregate(c: &mut Criterion) {
    const N: u32 = 100_000;
    let mut group = c.benchmark_group("decode_aggregate");
    group.throughput(Throughput::Elements(u64::from(N)));
    for (name, records) in [("drops", drops(N)), ("latency", latencies(N))] {
        let mut agg = Aggregate::default();
        group.bench_function(name, |b| {
            b.iter(|| {
                for r in &records {
                    aggregate(&mut agg, black_box(r));
                }
            })
        });
        black_box(&agg);
    }
    group.finish();
}

criterion_group!(benches, decode_aggregate);
criterion_main!(benches);
