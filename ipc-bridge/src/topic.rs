//! Topics across hosts: the exporting bridge subscribes locally and publishes on Zenoh; the
//! importing bridge subscribes on Zenoh and publishes locally. Each message crosses with its
//! type, checked on arrival against the type the importing side declared.
//!
//! A bridge never both imports and exports one topic ([`BridgeConfig`](crate::BridgeConfig)
//! refuses it), so nothing it publishes locally comes back to it.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ipc_tokio::{MessageType, SubscribeError, SubscribeOptions};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use zenoh::pubsub::Publisher;
use zenoh::qos::CongestionControl;

use crate::bridge::{Shared, key_chunk};
use crate::config::BridgeError;
use crate::wire::{decode_topic, encode_topic};

fn topic_key(shared: &Shared, name: &str) -> String {
    format!("{}/topic/{}", shared.ns, key_chunk(name))
}

/// Subscribes to the local topic `name` and publishes what it carries on Zenoh.
pub(crate) async fn export(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    name: &str,
    ty: MessageType,
    options: SubscribeOptions,
) -> Result<Arc<Publisher<'static>>, BridgeError> {
    let mut subscription = shared
        .node
        .subscribe_as(name, ty.clone(), options)
        .await
        .map_err(|source| BridgeError::Topic {
            topic: name.to_owned(),
            source,
        })?;
    let publisher = shared
        .session
        .declare_publisher(topic_key(shared, name))
        .congestion_control(CongestionControl::Block)
        .await
        .map_err(BridgeError::zenoh)?;
    let publisher = Arc::new(publisher);
    let name = name.to_owned();
    let out = publisher.clone();
    let node = shared.node.clone();
    tasks.spawn(async move {
        loop {
        let Some(item) = subscription.next().await else {
            break;
        };
            match item {
                Ok(payload) => {
                    let bytes = match encode_topic(&ty, &payload) {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            tracing::error!(topic = %name, error = %e, "cannot encode a topic message");
                            continue;
                        }
                    };
                    if let Err(e) = publisher.put(bytes).await {
                        tracing::warn!(topic = %name, error = %e, "zenoh put failed");
                    }
                }
                Err(SubscribeError::Lagged(n)) => {
                    tracing::warn!(topic = %name, dropped = n, "the bridge's subscription lagged: messages were not exported");
                }
                Err(SubscribeError::Codec(_)) => {}
                Err(SubscribeError::Untethered) => {
                    tracing::error!(topic = %name, "the bridge held the topic's publishers back past its untether timeout and was cut loose; it subscribes again (messages in between were not exported)");
                    match node.subscribe_as(&name, ty.clone(), options).await {
                        Ok(again) => subscription = again,
                        Err(e) => {
                            tracing::error!(topic = %name, error = %e, "cannot subscribe again: topic export ends");
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %name, error = %e, "topic export ends");
                    break;
                }
            }
        }
    });
    Ok(out)
}

/// Subscribes on Zenoh to what bridges elsewhere export on `name` and publishes it locally.
pub(crate) async fn import(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    name: &str,
    ty: MessageType,
) -> Result<zenoh::pubsub::Subscriber<()>, BridgeError> {
    let mut publisher = shared
        .node
        .publish_as(name, ty.clone(), 0)
        .await
        .map_err(|source| BridgeError::Topic {
            topic: name.to_owned(),
            source,
        })?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let subscriber = shared
        .session
        .declare_subscriber(topic_key(shared, name))
        .callback(move |sample| {
            let _ = tx.send(Bytes::from(sample.payload().to_bytes().into_owned()));
        })
        .await
        .map_err(BridgeError::zenoh)?;
    let name = name.to_owned();
    tasks.spawn(async move {
        while let Some(bytes) = rx.recv().await {
            let (got, payload) = match decode_topic(bytes) {
                Ok(decoded) => decoded,
                Err(e) => {
                    tracing::warn!(topic = %name, error = %e, "malformed topic message from a peer bridge, dropped");
                    continue;
                }
            };
            if got != ty {
                tracing::error!(topic = %name, remote = %got, local = %ty, "topic schema mismatch across hosts: message refused");
                continue;
            }
            if publisher.feed(payload).await.is_err() {
                tracing::warn!(topic = %name, "local publisher gone: topic import ends");
                break;
            }
            if rx.is_empty() && publisher.flush().await.is_err() {
                break;
            }
        }
    });
    Ok(subscriber)
}
