//! Manual acknowledgements of incoming publishes ([`Ack`]), released in arrival order by the
//! [`AckQueue`].

/// The acknowledgement (PUBACK / PUBREC) of an incoming publish, held until the message has been
/// handled (manual acks): a request the device has not answered when it crashes or loses power
/// stays unacknowledged, and the broker delivers it again to the restarted device (persistent
/// session). No-op for QoS 0.
pub(crate) enum Ack {
    V4(Box<rumqttc::Publish>),
    V5(Box<rumqttc::v5::mqttbytes::v5::Publish>),
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pkid = match self {
            Ack::V4(p) => p.pkid,
            Ack::V5(p) => p.pkid,
        };
        write!(f, "Ack(pkid {pkid})")
    }
}

/// A place in the [`AckQueue`]: the connection it came from and its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    connection: u64,
    seq: u64,
}

/// Acknowledgements released in the order the publishes arrived, as MQTT requires (3.1.1 and 5,
/// section 4.6; rumqttd drops a connection that acknowledges out of order): a message handled
/// early (a frame, a refusal) waits for the requests that arrived before it.
///
/// A new connection starts a new queue: the broker redelivers what was not acknowledged on the
/// old one, so its tickets are void.
#[derive(Debug, Default)]
pub(crate) struct AckQueue {
    connection: u64,
    /// Sequence number of `entries[0]`.
    first: u64,
    /// Not yet released, in arrival order; `true` once handled.
    entries: std::collections::VecDeque<(Ack, bool)>,
}

impl AckQueue {
    /// Forget the previous connection's acknowledgements (call on every CONNACK).
    pub(crate) fn new_connection(&mut self) {
        self.connection += 1;
        self.first = 0;
        self.entries.clear();
    }

    /// Queue the ack of a publish that just arrived.
    pub(crate) fn push(&mut self, ack: Ack) -> Ticket {
        self.entries.push_back((ack, false));
        Ticket { connection: self.connection, seq: self.first + self.entries.len() as u64 - 1 }
    }

    /// Mark `ticket` handled; returns the acks that may be sent now, in order.
    pub(crate) fn done(&mut self, ticket: Ticket) -> Vec<Ack> {
        if ticket.connection != self.connection || ticket.seq < self.first {
            return Vec::new();
        }
        if let Some(entry) = self.entries.get_mut((ticket.seq - self.first) as usize) {
            entry.1 = true;
        }
        let mut ready = Vec::new();
        while self.entries.front().is_some_and(|e| e.1) {
            ready.extend(self.entries.pop_front().map(|e| e.0));
            self.first += 1;
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(pkid: u16) -> Ack {
        let mut p = rumqttc::Publish::new("t", rumqttc::QoS::AtLeastOnce, Vec::new());
        p.pkid = pkid;
        Ack::V4(Box::new(p))
    }

    fn pkids(acks: Vec<Ack>) -> Vec<u16> {
        acks.into_iter().map(|a| if let Ack::V4(p) = a { p.pkid } else { 0 }).collect()
    }

    #[test]
    fn acks_leave_in_arrival_order_and_die_with_their_connection() {
        let mut q = AckQueue::default();
        let (a, b, c) = (q.push(ack(1)), q.push(ack(2)), q.push(ack(3)));
        assert!(pkids(q.done(b)).is_empty(), "2 waits for 1");
        assert!(pkids(q.done(c)).is_empty());
        assert_eq!(pkids(q.done(a)), [1, 2, 3]);
        let d = q.push(ack(4));
        q.new_connection();
        assert!(pkids(q.done(d)).is_empty(), "a ticket of an old connection is void");
        let e = q.push(ack(5));
        assert_eq!(pkids(q.done(e)), [5]);
    }
}
