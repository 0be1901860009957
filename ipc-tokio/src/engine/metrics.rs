//! The engine's metrics, through the [`metrics`] facade: when the engine is built with
//! `EngineBuilder::metrics(true)`, whatever recorder the host installed gets them
//! (`shmlinkd --metrics-addr` turns them on and installs a Prometheus exporter); off (the
//! default), no task runs and they cost nothing, not even the wake-ups of the rate limit.
//!
//! A task of its own follows the counts the router publishes ([`EngineStats`]) and turns
//! their changes into counter increments and gauge values: never per message, never on the
//! router's task, at most a few times a second, and not at all while the engine is idle
//! (invariant 7). Every series is engine-wide, without labels: a bounded set whatever
//! names peers choose (topics and queues included: per-topic, per-subscription, per-queue
//! and per-consumer counters are in the inspector's snapshot, `shmlinkctl topics`,
//! `subscriptions`, `queues` and `consumers`, not in series whose number nodes could grow
//! at will).
//!
//! | series | kind | what |
//! |---|---|---|
//! | `shmlink_nodes` | gauge | registered nodes |
//! | `shmlink_session_ends` | gauge | live session ends |
//! | `shmlink_services` | gauge | served names |
//! | `shmlink_connections` | gauge | open control connections |
//! | `shmlink_active_nodes` | gauge | nodes the router polls on every pass |
//! | `shmlink_waiting_messages` | gauge | messages waiting for room in a receive arena |
//! | `shmlink_rx_arena_bytes_in_use` | gauge | bytes in use in every receive arena together |
//! | `shmlink_memory_bytes` | gauge | shared memory the engine holds for nodes: blocks, topic and hand-off segments |
//! | `shmlink_memory_budget_bytes` | gauge | the engine-wide memory budget |
//! | `shmlink_segments` | gauge | hand-off segments alive (one per large payload) |
//! | `shmlink_messages_total` | counter | messages copied |
//! | `shmlink_bytes_total` | counter | their payload bytes |
//! | `shmlink_violations_total` | counter | nodes closed for breaking the protocol |
//! | `shmlink_refused_connections_total` | counter | connections refused by a limit |
//! | `shmlink_accept_failures_total` | counter | failed `accept` calls |
//! | `shmlink_topics` | gauge | live topics |
//! | `shmlink_topic_segments` | gauge | topic broadcast segments alive |
//! | `shmlink_topic_published_total` | counter | messages published on topics (each copied once) |
//! | `shmlink_topic_delivered_total` | counter | topic deliveries, summed over subscribers |
//! | `shmlink_topic_lagged_total` | counter | topic messages lost to `DropOldest` (each reported as `Lagged`) |
//! | `shmlink_queues` | gauge | declared queues |
//! | `shmlink_queue_messages_ready` | gauge | queued messages ready for delivery |
//! | `shmlink_queue_messages_unacked` | gauge | queue deliveries not yet settled |
//! | `shmlink_queue_memory_bytes_in_use` | gauge | bytes of queued payloads the engine keeps (against its queue memory budget) |
//! | `shmlink_queue_enqueued_total` | counter | messages that entered a queue (from producers, and dead letters) |
//! | `shmlink_queue_delivered_total` | counter | queue deliveries, redeliveries included |
//! | `shmlink_queue_redelivered_total` | counter | of which redeliveries |
//! | `shmlink_queue_acked_total` | counter | queue deliveries acknowledged |
//! | `shmlink_queue_dead_lettered_total` | counter | queued messages dead-lettered (rejected, or over their deliveries) |
//! | `shmlink_queue_expired_total` | counter | queue deliveries whose lease ran out |

use std::time::Duration;

use tokio::sync::watch;

use crate::engine::config::EngineStats;

/// The shortest time between two updates: the counts coalesce meanwhile.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// Follows `stats` until the engine stops.
pub(crate) async fn run(mut stats: watch::Receiver<EngineStats>) {
    describe();
    let mut last = EngineStats::default();
    while stats.changed().await.is_ok() {
        let now = *stats.borrow_and_update();
        record(&last, &now);
        last = now;
        // Rate-limits the updates, not a synchronisation: a change meanwhile is seen by the
        // next `changed`.
        tokio::time::sleep(MIN_INTERVAL).await;
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!("shmlink_nodes", "Registered nodes");
    describe_gauge!("shmlink_session_ends", "Live session ends");
    describe_gauge!("shmlink_services", "Served names");
    describe_gauge!("shmlink_connections", "Open control connections");
    describe_gauge!(
        "shmlink_active_nodes",
        "Nodes the router polls on every pass"
    );
    describe_gauge!(
        "shmlink_waiting_messages",
        "Messages waiting for room in a receive arena"
    );
    describe_gauge!(
        "shmlink_rx_arena_bytes_in_use",
        "Bytes in use in every node's receive arena together"
    );
    describe_gauge!(
        "shmlink_memory_bytes",
        "Shared memory the engine holds for nodes: blocks and topic segments"
    );
    describe_gauge!(
        "shmlink_memory_budget_bytes",
        "The engine-wide memory budget"
    );
    describe_gauge!(
        "shmlink_segments",
        "Hand-off segments alive (one per large payload)"
    );
    describe_counter!("shmlink_messages_total", "Messages copied");
    describe_counter!("shmlink_bytes_total", "Payload bytes copied");
    describe_counter!(
        "shmlink_violations_total",
        "Nodes closed for breaking the protocol"
    );
    describe_counter!(
        "shmlink_refused_connections_total",
        "Connections refused by an admission limit"
    );
    describe_counter!("shmlink_accept_failures_total", "Failed accept calls");
    describe_gauge!("shmlink_topics", "Live topics");
    describe_gauge!("shmlink_topic_segments", "Topic broadcast segments alive");
    describe_counter!(
        "shmlink_topic_published_total",
        "Messages published on topics, each copied once"
    );
    describe_counter!(
        "shmlink_topic_delivered_total",
        "Topic deliveries, summed over subscribers"
    );
    describe_counter!(
        "shmlink_topic_lagged_total",
        "Topic messages lost to DropOldest, summed over subscribers"
    );
    describe_gauge!("shmlink_queues", "Declared queues");
    describe_gauge!(
        "shmlink_queue_messages_ready",
        "Queued messages ready for delivery"
    );
    describe_gauge!(
        "shmlink_queue_messages_unacked",
        "Queue deliveries not yet settled"
    );
    describe_gauge!(
        "shmlink_queue_memory_bytes_in_use",
        "Bytes of queued payloads the engine keeps"
    );
    describe_counter!(
        "shmlink_queue_enqueued_total",
        "Messages that entered a queue, from producers and as dead letters"
    );
    describe_counter!(
        "shmlink_queue_delivered_total",
        "Queue deliveries, redeliveries included"
    );
    describe_counter!(
        "shmlink_queue_redelivered_total",
        "Queue deliveries of a message delivered before"
    );
    describe_counter!("shmlink_queue_acked_total", "Queue deliveries acknowledged");
    describe_counter!(
        "shmlink_queue_dead_lettered_total",
        "Queued messages dead-lettered (rejected, or over their deliveries)"
    );
    describe_counter!(
        "shmlink_queue_expired_total",
        "Queue deliveries whose lease ran out"
    );
}

/// Records the change from `last` to `now`.
fn record(last: &EngineStats, now: &EngineStats) {
    let gauge = |name: &'static str, v: usize| metrics::gauge!(name).set(v as f64);
    gauge("shmlink_nodes", now.nodes);
    gauge("shmlink_session_ends", now.session_ends);
    gauge("shmlink_services", now.services);
    gauge("shmlink_connections", now.connections);
    gauge("shmlink_active_nodes", now.active_nodes);
    gauge("shmlink_waiting_messages", now.waiting);
    gauge("shmlink_topics", now.topics);
    gauge("shmlink_topic_segments", now.topic_segments);
    gauge("shmlink_queues", now.queues);
    gauge("shmlink_queue_messages_ready", now.queue_ready);
    gauge("shmlink_queue_messages_unacked", now.queue_unacked);
    metrics::gauge!("shmlink_queue_memory_bytes_in_use").set(now.queue_bytes as f64);
    metrics::gauge!("shmlink_rx_arena_bytes_in_use").set(now.rx_in_use as f64);
    metrics::gauge!("shmlink_memory_bytes").set(now.memory_used as f64);
    metrics::gauge!("shmlink_memory_budget_bytes").set(now.memory_budget as f64);
    metrics::gauge!("shmlink_segments").set(now.segments as f64);
    let counter = |name: &'static str, before: u64, after: u64| {
        metrics::counter!(name).increment(after.saturating_sub(before));
    };
    counter("shmlink_messages_total", last.messages, now.messages);
    counter("shmlink_bytes_total", last.bytes, now.bytes);
    counter("shmlink_violations_total", last.violations, now.violations);
    counter(
        "shmlink_refused_connections_total",
        last.refused_connections,
        now.refused_connections,
    );
    counter(
        "shmlink_accept_failures_total",
        last.accept_failures,
        now.accept_failures,
    );
    counter(
        "shmlink_topic_published_total",
        last.topic_published,
        now.topic_published,
    );
    counter(
        "shmlink_topic_delivered_total",
        last.topic_delivered,
        now.topic_delivered,
    );
    counter(
        "shmlink_topic_lagged_total",
        last.topic_lagged,
        now.topic_lagged,
    );
    counter(
        "shmlink_queue_enqueued_total",
        last.queue_enqueued,
        now.queue_enqueued,
    );
    counter(
        "shmlink_queue_delivered_total",
        last.queue_delivered,
        now.queue_delivered,
    );
    counter(
        "shmlink_queue_redelivered_total",
        last.queue_redelivered,
        now.queue_redelivered,
    );
    counter(
        "shmlink_queue_acked_total",
        last.queue_acked,
        now.queue_acked,
    );
    counter(
        "shmlink_queue_dead_lettered_total",
        last.queue_dead_lettered,
        now.queue_dead_lettered,
    );
    counter(
        "shmlink_queue_expired_total",
        last.queue_expired,
        now.queue_expired,
    );
}
