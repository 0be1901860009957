//! iceoryx2: request/response for requests, publish/subscribe for streams and fan-out,
//! `[u8]` slice payloads; waiting on an event listener (`iceoryx2-event`) or busy-polling
//! (`iceoryx2-poll`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::common::{
    BATCH, CpuProbe, MARKER_LEN, MIN_SIZE, QUIT_LEN, check_ack, check_reply, check_streamed,
    checksum, current_thread, phase_loop, reply_byte, rtt_loop, seed_byte, server_spec, spawn_role,
};
use crate::fanout::{Subscribers, Tally, fanout_loop};
use crate::{BoxError, Measured, Pattern, Res, Spec, Transport};
use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::prelude::*;

/// Waiting for the peer: on an event listener, or spinning.
struct Waiter {
    event: bool,
    notifier: Notifier<ipc::Service>,
    listener: Listener<ipc::Service>,
}

impl Waiter {
    /// `to_peer` / `from_peer`: the two event services, one per direction.
    fn new(node: &Node<ipc::Service>, base: &str, side: &str, event: bool) -> Res<Self> {
        let other = if side == "client" { "server" } else { "client" };
        let to_peer = node
            .service_builder(&ServiceName::new(&format!("{base}/to-{other}"))?)
            .event()
            .open_or_create()?;
        let from_peer = node
            .service_builder(&ServiceName::new(&format!("{base}/to-{side}"))?)
            .event()
            .open_or_create()?;
        Ok(Self {
            event,
            notifier: to_peer.notifier_builder().create()?,
            listener: from_peer.listener_builder().create()?,
        })
    }

    fn notify(&self) -> Res<()> {
        if self.event {
            self.notifier.notify()?;
        }
        Ok(())
    }

    fn wait(&self) -> Res<()> {
        if self.event {
            self.listener.blocking_wait(|_| {})?;
        } else {
            core::hint::spin_loop();
        }
        Ok(())
    }
}

/// Chunks of the largest payload iceoryx2 preallocates for the round trip (`rtt`), each of
/// them zeroed when the ports are created: the client's request segment holds
/// `max_servers × 2 × max_active_requests + max_loaned_requests` = 1 × 2 × 1 + 1 = 3, the
/// server's response segment `max_clients × 2 × max_active_requests × (max_response_buffer
/// + max_borrowed_responses_per_pending_response + max_loaned_responses_per_request)` =
/// 1 × 2 × 1 × (1 + 1 + 1) = 6, with every one of these settings at its least, 1 (iceoryx2
/// 0.10, `required_amount_of_chunks_per_{client,server}_data_segment`).
pub(crate) const RTT_CHUNKS: usize = 9;

/// The shared memory the harness lets iceoryx2 take for a round trip: 4 GiB (a few GiB on
/// a shared 24 GiB machine, `/dev/shm` being 24 GiB). A round trip of `size` needs
/// `RTT_CHUNKS × size`, so iceoryx2 measures up to 455 MiB here: 256 MiB (2.25 GiB) of the
/// default sizes, not 1 GiB (9 GiB, all of it written with zeroes before the first sample).
pub(crate) const MAX_RTT_SHM: usize = 4 << 30;

fn quiet() {
    set_log_level(LogLevel::Error);
}

/// The measuring client: creates the services, starts the server, measures.
pub(crate) fn client(spec: &Spec) -> Res<Measured> {
    quiet();
    let event = spec.transport == Transport::Iceoryx2Event;
    let base = format!("shmlink-compare/{}", std::process::id());
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let n = spec.size;
    let slice = n.max(MIN_SIZE);
    let rt = current_thread()?;
    if spec.pattern.is_stream() {
        // `stream-flush`: a notification per message (event mode), as a flush per message.
        let per_notify = if spec.pattern == Pattern::StreamFlush {
            1
        } else {
            BATCH
        };
        let data = node
            .service_builder(&ServiceName::new(&format!("{base}/data"))?)
            .publish_subscribe::<[u8]>()
            .subscriber_max_buffer_size(4 * BATCH as usize)
            .history_size(0)
            .enable_safe_overflow(false)
            .create()?;
        let acks = node
            .service_builder(&ServiceName::new(&format!("{base}/ack"))?)
            .publish_subscribe::<u64>()
            .subscriber_max_buffer_size(4)
            .history_size(0)
            .enable_safe_overflow(false)
            .create()?;
        let publisher = data
            .publisher_builder()
            .initial_max_slice_len(slice)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()?;
        let ack_sub = acks.subscriber_builder().create()?;
        let waiter = Waiter::new(&node, &base, "client", event)?;
        let mut server = spawn_role("serve", &server_spec(spec, base.clone()), true)?;
        server.ready()?;
        let cpu = CpuProbe::client_and(server.pid());
        let m = rt.block_on(phase_loop(spec, &cpu, async |d| {
            let t0 = Instant::now();
            let mut i = 0u64;
            loop {
                for _ in 0..BATCH / per_notify {
                    for _ in 0..per_notify {
                        let b = seed_byte(i);
                        publisher
                            .loan_slice_uninit(n)?
                            .write_from_fn(|_| b)
                            .send()?;
                        i += 1;
                    }
                    waiter.notify()?;
                }
                if t0.elapsed() >= d {
                    break;
                }
            }
            publisher
                .loan_slice_uninit(MARKER_LEN)?
                .write_from_fn(|_| 0xFF)
                .send()?;
            waiter.notify()?;
            let ack = loop {
                if let Some(sample) = ack_sub.receive()? {
                    break *sample.payload();
                }
                waiter.wait()?;
            };
            check_ack(&ack.to_le_bytes(), i)?;
            Ok(i)
        }))?;
        publisher
            .loan_slice_uninit(QUIT_LEN)?
            .write_from_fn(|_| 0xFE)
            .send()?;
        waiter.notify()?;
        server.finish(Duration::from_secs(10))?;
        return Ok(m);
    }

    // A round trip has one request in flight and loans one request and one response at a
    // time: every buffer at 1 keeps the preallocated segments at `RTT_CHUNKS` payloads.
    let rtt = spec.pattern == Pattern::Rtt;
    let rr = node
        .service_builder(&ServiceName::new(&format!("{base}/rr"))?)
        .request_response::<[u8], [u8]>()
        .max_active_requests_per_client(if rtt { 1 } else { spec.inflight.max(2) })
        .max_response_buffer_size(if rtt { 1 } else { 2 })
        .max_borrowed_responses_per_pending_response(if rtt { 1 } else { 2 })
        .max_loaned_requests(if rtt { 1 } else { 2 })
        .enable_safe_overflow_for_requests(false)
        .enable_safe_overflow_for_responses(false)
        .max_servers(1)
        .max_clients(1)
        .create()?;
    let client = rr.client_builder().initial_max_slice_len(slice).create()?;
    let waiter = Waiter::new(&node, &base, "client", event)?;
    let mut server = spawn_role("serve", &server_spec(spec, base.clone()), true)?;
    server.ready()?;
    let cpu = CpuProbe::client_and(server.pid());
    let m = match spec.pattern {
        Pattern::Rtt => rt.block_on(rtt_loop(spec, &cpu, async |i| {
            let b = seed_byte(i);
            let pending = client.loan_slice_uninit(n)?.write_from_fn(|_| b).send()?;
            waiter.notify()?;
            let reply = loop {
                if let Some(reply) = pending.receive()? {
                    break reply;
                }
                waiter.wait()?;
            };
            check_reply(reply.payload(), n, b)
        }))?,
        Pattern::Concurrent => {
            let inflight = spec.inflight;
            rt.block_on(phase_loop(spec, &cpu, async |d| {
                let t0 = Instant::now();
                let mut waiting = VecDeque::with_capacity(inflight);
                let mut next = 0u64;
                let mut done = 0u64;
                loop {
                    let mut sent = false;
                    while waiting.len() < inflight && t0.elapsed() < d {
                        let b = seed_byte(next);
                        next += 1;
                        let pending = client.loan_slice_uninit(n)?.write_from_fn(|_| b).send()?;
                        waiting.push_back((b, pending));
                        sent = true;
                    }
                    if sent {
                        waiter.notify()?;
                    }
                    let Some((b, pending)) = waiting.front() else {
                        break;
                    };
                    match pending.receive()? {
                        Some(reply) => {
                            check_reply(reply.payload(), n, *b)?;
                            drop(reply);
                            waiting.pop_front();
                            done += 1;
                        }
                        None => waiter.wait()?,
                    }
                }
                Ok(done)
            }))?
        }
        _ => return Err("not an iceoryx2 request pattern".into()),
    };
    let quit = client
        .loan_slice_uninit(QUIT_LEN)?
        .write_from_fn(|_| 0xFE)
        .send()?;
    waiter.notify()?;
    server.finish(Duration::from_secs(10))?;
    drop(quit);
    Ok(m)
}

/// The server: opens the services, says "ready", serves until the quit message.
pub(crate) fn serve(spec: &Spec) -> Res<()> {
    quiet();
    if spec.pattern == Pattern::Fanout {
        return fanout_subscriber(spec);
    }
    let event = spec.transport == Transport::Iceoryx2Event;
    let base = &spec.addr;
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let slice = spec.size.max(MIN_SIZE);
    if spec.pattern.is_stream() {
        let data = node
            .service_builder(&ServiceName::new(&format!("{base}/data"))?)
            .publish_subscribe::<[u8]>()
            .open()?;
        let acks = node
            .service_builder(&ServiceName::new(&format!("{base}/ack"))?)
            .publish_subscribe::<u64>()
            .open()?;
        let subscriber = data.subscriber_builder().create()?;
        let ack_pub = acks.publisher_builder().create()?;
        let waiter = Waiter::new(&node, base, "server", event)?;
        println!("ready");
        let mut count = 0u64;
        loop {
            while let Some(sample) = subscriber.receive()? {
                let msg = sample.payload();
                match msg.len() {
                    QUIT_LEN => return Ok(()),
                    MARKER_LEN => {
                        ack_pub.send_copy(count)?;
                        waiter.notify()?;
                        count = 0;
                    }
                    _ => {
                        check_streamed(msg, count)?;
                        count += 1;
                    }
                }
            }
            waiter.wait()?;
        }
    }
    let rr = node
        .service_builder(&ServiceName::new(&format!("{base}/rr"))?)
        .request_response::<[u8], [u8]>()
        .open()?;
    let server = rr
        .server_builder()
        .initial_max_slice_len(slice)
        .max_loaned_responses_per_request(if spec.pattern == Pattern::Rtt { 1 } else { 2 })
        .create()?;
    let waiter = Waiter::new(&node, base, "server", event)?;
    println!("ready");
    loop {
        let mut answered = false;
        while let Some(request) = server.receive()? {
            let msg = request.payload();
            if msg.len() == QUIT_LEN {
                return Ok(());
            }
            let b = reply_byte(checksum(msg));
            request
                .loan_slice_uninit(msg.len())?
                .write_from_fn(|_| b)
                .send()?;
            answered = true;
        }
        if answered {
            waiter.notify()?;
        }
        waiter.wait()?;
    }
}

// ===== iceoryx2 fan-out =====

/// Samples each `fanout` subscriber may have unread (the publisher then waits:
/// `RetryUntilDelivered`): two batches, so that a subscriber woken once per batch never
/// holds the publisher back while it is awake.
const FANOUT_BUFFER: usize = 2 * BATCH as usize;

/// `fanout`: this process publishes `[u8]` slices to `spec.subscribers` subscriber processes
/// (publish/subscribe, one sample read by all of them), notifying them once per batch on an
/// event service (`iceoryx2-event`) or letting them spin (`iceoryx2-poll`).
pub(crate) fn fanout_client(spec: &Spec) -> Res<Measured> {
    quiet();
    let event = spec.transport == Transport::Iceoryx2Event;
    let base = format!("shmlink-compare/{}", std::process::id());
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let n = spec.size;
    let subscribers = spec.subscribers.max(1);
    let data = node
        .service_builder(&ServiceName::new(&format!("{base}/fanout"))?)
        .publish_subscribe::<[u8]>()
        .subscriber_max_buffer_size(FANOUT_BUFFER)
        .history_size(0)
        .enable_safe_overflow(false)
        .max_publishers(1)
        .max_subscribers(subscribers)
        .max_nodes(subscribers + 1)
        .create()?;
    let wake = node
        .service_builder(&ServiceName::new(&format!("{base}/wake"))?)
        .event()
        .max_notifiers(1)
        .max_listeners(subscribers)
        .max_nodes(subscribers + 1)
        .create()?;
    let publisher = data
        .publisher_builder()
        .initial_max_slice_len(n.max(MIN_SIZE))
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()?;
    let notifier = wake.notifier_builder().create()?;
    let notify = || -> Res<()> {
        if event {
            notifier.notify()?;
        }
        Ok(())
    };
    let rt = current_thread()?;
    rt.block_on(async {
        let mut subs = Subscribers::spawn(spec, &base)?;
        subs.ready().await?;
        let m = fanout_loop(spec, &mut subs, None, async |d| {
            let t0 = Instant::now();
            let mut i = 0u64;
            loop {
                for _ in 0..BATCH {
                    let b = seed_byte(i);
                    publisher
                        .loan_slice_uninit(n)?
                        .write_from_fn(|_| b)
                        .send()?;
                    i += 1;
                }
                notify()?;
                if t0.elapsed() >= d {
                    break;
                }
            }
            publisher
                .loan_slice_uninit(MARKER_LEN)?
                .write_from_fn(|_| 0xFF)
                .send()?;
            notify()?;
            Ok(i)
        })
        .await;
        let quit = publisher
            .loan_slice_uninit(QUIT_LEN)
            .map_err(BoxError::from)
            .and_then(|s| Ok(s.write_from_fn(|_| 0xFE).send()?))
            .and_then(|_| notify());
        let m = m?;
        quit?;
        subs.finish().await?;
        Ok::<_, BoxError>(m)
    })
}

/// A `fanout` subscriber: reads every sample, checks it, waits on the event service between
/// batches (or spins); ends at the quit message.
fn fanout_subscriber(spec: &Spec) -> Res<()> {
    let event = spec.transport == Transport::Iceoryx2Event;
    let base = &spec.addr;
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let data = node
        .service_builder(&ServiceName::new(&format!("{base}/fanout"))?)
        .publish_subscribe::<[u8]>()
        .open()?;
    let wake = node
        .service_builder(&ServiceName::new(&format!("{base}/wake"))?)
        .event()
        .open()?;
    let subscriber = data.subscriber_builder().create()?;
    let listener = wake.listener_builder().create()?;
    println!("ready");
    let mut tally = Tally::default();
    loop {
        while let Some(sample) = subscriber.receive()? {
            if !tally.take(sample.payload())? {
                return Ok(());
            }
        }
        if event {
            listener.blocking_wait(|_| {})?;
        } else {
            core::hint::spin_loop();
        }
    }
}
