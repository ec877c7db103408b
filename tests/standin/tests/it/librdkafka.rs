//! librdkafka (through the `rdkafka` crate) against the stand-in: what
//! the agent's Kafka client relies on.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::metadata::Metadata;

use crate::common::*;

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "5000")
        .create()
        .expect("admin client")
}

/// (leader, replicas, isr) of a partition, as librdkafka reports it.
fn partition(md: &Metadata, topic: &str, p: i32) -> (i32, Vec<i32>, Vec<i32>) {
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .expect("topic");
    let p = t
        .partitions()
        .iter()
        .find(|x| x.id() == p)
        .expect("partition");
    (p.leader(), p.replicas().to_vec(), p.isr().to_vec())
}

#[test]
fn librdkafka_fetches_metadata_and_describes_configs() {
    let mut spec = fast_spec(3);
    spec.topic_min_insync_replicas.insert("orders".into(), 3);
    let c = create(&spec);
    c.start_all(TIMEOUT).unwrap();
    let admin = admin(&c.bootstrap());
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata through librdkafka");
    let mut brokers: Vec<(i32, String, i32)> = md
        .brokers()
        .iter()
        .map(|b| (b.id(), b.host().to_string(), b.port()))
        .collect();
    brokers.sort();
    let expected: Vec<(i32, String, i32)> = c
        .node_ids()
        .into_iter()
        .map(|id| {
            let port = c.address(id).rsplit(':').next().unwrap().parse().unwrap();
            (id, "127.0.0.1".to_string(), port)
        })
        .collect();
    assert_eq!(brokers, expected);
    for t in &c.definition().topics {
        let mt = md
            .topics()
            .iter()
            .find(|x| x.name() == t.name)
            .expect("topic listed");
        assert_eq!(mt.partitions().len(), t.replicas.len(), "{}", t.name);
        for (p, replicas) in t.replicas.iter().enumerate() {
            let (leader, got_replicas, isr) = partition(&md, &t.name, p as i32);
            assert_eq!(&got_replicas, replicas, "{}-{p}", t.name);
            assert_eq!(leader, replicas[0], "{}-{p}: preferred leader", t.name);
            let mut isr_sorted = isr.clone();
            isr_sorted.sort();
            let mut all = replicas.clone();
            all.sort();
            assert_eq!(isr_sorted, all, "{}-{p}: full ISR", t.name);
        }
    }

    // A stopped broker leaves the ISRs and the broker list at once.
    c.stop(2).unwrap();
    c.wait_exited(2, TIMEOUT).unwrap();
    let md = admin
        .inner()
        .fetch_metadata(Some("orders"), Duration::from_secs(10))
        .unwrap();
    assert!(md.brokers().iter().all(|b| b.id() != 2));
    for p in 0..4 {
        let (leader, replicas, isr) = partition(&md, "orders", p);
        assert!(!isr.contains(&2), "orders-{p}: {isr:?}");
        assert_eq!(replicas.len(), 3);
        assert_ne!(leader, 2);
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = rt
        .block_on(admin.describe_configs(
            [
                &ResourceSpecifier::Topic("orders"),
                &ResourceSpecifier::Topic("payments.v2"),
                &ResourceSpecifier::Broker(3),
            ],
            &opts,
        ))
        .expect("describe_configs through librdkafka");
    assert_eq!(results.len(), 3);
    let orders = results[0].as_ref().expect("orders configs");
    let min_isr = orders
        .get("min.insync.replicas")
        .expect("min.insync.replicas");
    assert_eq!(min_isr.value.as_deref(), Some("3"));
    assert_eq!(min_isr.source, ConfigSource::DynamicTopic);
    let payments = results[1].as_ref().expect("payments configs");
    let min_isr = payments.get("min.insync.replicas").unwrap();
    assert_eq!(min_isr.value.as_deref(), Some("2"));
    assert_eq!(min_isr.source, ConfigSource::StaticBroker);
    assert_eq!(
        payments.get("cleanup.policy").unwrap().value.as_deref(),
        Some("delete")
    );
    let broker3 = results[2].as_ref().expect("broker 3 configs");
    assert_eq!(
        broker3.get("min.insync.replicas").unwrap().value.as_deref(),
        Some("2")
    );
    assert_eq!(broker3.get("node.id").unwrap().value.as_deref(), Some("3"));
    assert!(broker3.get("ssl.keystore.password").unwrap().is_sensitive);
}
