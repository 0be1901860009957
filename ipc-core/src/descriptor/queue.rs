//! Queue entries of the rings: settlements (ack, nack, reject, lease extension) and
//! cancellations on the submit ring, deliveries, confirms and settlement answers on the
//! deliver ring. A producer's messages are ordinary `DATA` entries naming its producer id.

use super::{ArenaBounds, Empty, RawDescriptor, Violation, check_payload, kind, queue_flags};

/// How a consumer settles a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueSettle {
    /// Done with it: the message is removed.
    Ack,
    /// Give it back to the head of the queue.
    Nack,
    /// Send it to the dead-letter queue (or drop it, if the queue has none).
    Reject,
    /// Renew its lease.
    Extend,
}

/// A queue entry of a node's submit ring that passed validation (the engine side). Whether
/// the id and the tag are the node's own is decided by the engine's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueSubmission {
    /// Consumer `consumer` settles delivery `tag`.
    Settle {
        /// The consumer id.
        consumer: u32,
        /// The delivery tag.
        tag: u64,
        /// How.
        how: QueueSettle,
    },
    /// Producer or consumer `id` ends.
    Cancel {
        /// The producer or consumer id.
        id: u32,
    },
}

/// Validates a queue entry of a node's submit ring: only the session and `aux` may be set.
///
/// # Errors
///
/// [`Violation::UnknownKind`], [`Violation::Flags`], [`Violation::Segment`], or
/// [`Violation::OutOfBounds`] for a payload field that is not zero.
pub fn validate_queue_submit(raw: &RawDescriptor) -> Result<QueueSubmission, Violation> {
    if raw.flags != 0 {
        return Err(Violation::Flags { flags: raw.flags });
    }
    if raw.segment != 0 {
        return Err(Violation::Segment {
            segment: raw.segment,
        });
    }
    if raw.len != 0 || raw.offset != 0 {
        return Err(Violation::OutOfBounds {
            offset: raw.offset,
            len: u64::from(raw.len),
            size: 0,
        });
    }
    let how = match raw.kind {
        kind::QUEUE_ACK => QueueSettle::Ack,
        kind::QUEUE_NACK => QueueSettle::Nack,
        kind::QUEUE_REJECT => QueueSettle::Reject,
        kind::QUEUE_EXTEND => QueueSettle::Extend,
        kind::QUEUE_CANCEL if raw.aux == 0 => {
            return Ok(QueueSubmission::Cancel { id: raw.session });
        }
        kind => return Err(Violation::UnknownKind { kind }),
    };
    Ok(QueueSubmission::Settle {
        consumer: raw.session,
        tag: raw.aux,
        how,
    })
}

/// A queue entry of the deliver ring that passed validation (the node side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueDelivery {
    /// A message for `consumer` at `offset`/`len` of the receive arena.
    Data {
        /// The consumer id.
        consumer: u32,
        /// Offset in the receive arena.
        offset: u64,
        /// Message length.
        len: u32,
        /// The delivery tag the consumer settles it with.
        tag: u64,
        /// How many times it has been delivered, this time included.
        count: u32,
        /// Whether it was delivered before.
        redelivered: bool,
    },
    /// `count` messages of `producer` settled with `outcome`.
    Confirm {
        /// The producer id.
        producer: u32,
        /// How many messages.
        count: u64,
        /// A `queue_outcome` value.
        outcome: u32,
    },
    /// The answer to a settlement of delivery `tag` by `consumer`.
    Settled {
        /// The consumer id.
        consumer: u32,
        /// The delivery tag.
        tag: u64,
        /// A `queue_outcome` value.
        outcome: u32,
    },
    /// `consumer` is over.
    Ended {
        /// The consumer id.
        consumer: u32,
    },
}

/// Validates a queue entry of the deliver ring against the node's receive arena.
///
/// # Errors
///
/// The [`Violation`] that disqualifies the entry.
pub fn validate_queue_deliver(
    raw: &RawDescriptor,
    rx: &ArenaBounds,
) -> Result<QueueDelivery, Violation> {
    match raw.kind {
        kind::QUEUE_DATA => {
            if raw.flags & !queue_flags::REDELIVERED != 0 {
                return Err(Violation::Flags { flags: raw.flags });
            }
            if raw.segment == 0 {
                return Err(Violation::Segment { segment: 0 });
            }
            check_payload(raw, rx, Empty::OwnSubBlock)?;
            Ok(QueueDelivery::Data {
                consumer: raw.session,
                offset: raw.offset,
                len: raw.len,
                tag: raw.aux,
                count: raw.segment,
                redelivered: raw.flags & queue_flags::REDELIVERED != 0,
            })
        }
        kind::QUEUE_CONFIRM | kind::QUEUE_SETTLED | kind::QUEUE_ENDED if raw.flags != 0 => {
            Err(Violation::Flags { flags: raw.flags })
        }
        kind::QUEUE_CONFIRM if raw.aux == 0 => Err(Violation::Credit { count: 0 }),
        kind::QUEUE_CONFIRM => Ok(QueueDelivery::Confirm {
            producer: raw.session,
            count: raw.aux,
            outcome: raw.len,
        }),
        kind::QUEUE_SETTLED => Ok(QueueDelivery::Settled {
            consumer: raw.session,
            tag: raw.aux,
            outcome: raw.len,
        }),
        kind::QUEUE_ENDED => Ok(QueueDelivery::Ended {
            consumer: raw.session,
        }),
        kind => Err(Violation::UnknownKind { kind }),
    }
}

impl RawDescriptor {
    /// A `QUEUE_DATA` entry.
    pub fn queue_data(
        consumer: u32,
        offset: u64,
        len: u32,
        tag: u64,
        count: u32,
        redelivered: bool,
    ) -> Self {
        Self {
            session: consumer,
            kind: kind::QUEUE_DATA,
            flags: if redelivered {
                queue_flags::REDELIVERED
            } else {
                0
            },
            segment: count,
            len,
            offset,
            aux: tag,
        }
    }

    /// A `QUEUE_CONFIRM` or `QUEUE_SETTLED` entry: `aux` with `outcome` in `len`.
    pub fn queue_outcome(kind: u16, session: u32, aux: u64, outcome: u32) -> Self {
        Self {
            session,
            kind,
            len: outcome,
            aux,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RX: ArenaBounds = ArenaBounds {
        size: 1 << 20,
        align: 256,
    };

    #[test]
    fn settlements_and_cancels_validate_and_hostile_fields_are_refused() {
        let ack = RawDescriptor::control(kind::QUEUE_ACK, 7, 42);
        assert_eq!(
            validate_queue_submit(&ack),
            Ok(QueueSubmission::Settle {
                consumer: 7,
                tag: 42,
                how: QueueSettle::Ack
            })
        );
        let cancel = RawDescriptor::control(kind::QUEUE_CANCEL, 9, 0);
        assert_eq!(
            validate_queue_submit(&cancel),
            Ok(QueueSubmission::Cancel { id: 9 })
        );
        for bad in [
            RawDescriptor { flags: 1, ..ack },
            RawDescriptor { segment: 3, ..ack },
            RawDescriptor { len: 5, ..ack },
            RawDescriptor { offset: 256, ..ack },
            RawDescriptor::control(kind::QUEUE_CANCEL, 9, 1),
            RawDescriptor::control(kind::QUEUE_DATA, 9, 1),
        ] {
            assert!(validate_queue_submit(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deliveries_validate_against_the_receive_arena() {
        let data = RawDescriptor::queue_data(3, 512, 100, 8, 2, true);
        assert_eq!(
            validate_queue_deliver(&data, &RX),
            Ok(QueueDelivery::Data {
                consumer: 3,
                offset: 512,
                len: 100,
                tag: 8,
                count: 2,
                redelivered: true
            })
        );
        for bad in [
            RawDescriptor {
                offset: 1 << 20,
                ..data
            },
            RawDescriptor {
                offset: 100,
                ..data
            },
            RawDescriptor { segment: 0, ..data },
            RawDescriptor { flags: 6, ..data },
            RawDescriptor::queue_outcome(kind::QUEUE_CONFIRM, 1, 0, 0),
        ] {
            assert!(validate_queue_deliver(&bad, &RX).is_err(), "{bad:?}");
        }
        let confirm = RawDescriptor::queue_outcome(kind::QUEUE_CONFIRM, 1, 5, 0);
        assert_eq!(
            validate_queue_deliver(&confirm, &RX),
            Ok(QueueDelivery::Confirm {
                producer: 1,
                count: 5,
                outcome: 0
            })
        );
    }
}
