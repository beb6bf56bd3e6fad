//! What a backend can do. Callers check these flags; they never match on a backend's type.

/// The features a broker backend offers. The conformance suite skips a scenario only when the
/// backend declares it lacks the feature the scenario needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Messages survive a broker restart.
    pub persistent: bool,
    /// Several consumers in one group share the messages (each message goes to one of them).
    pub consumer_groups: bool,
    /// Several groups each receive every message.
    pub fan_out: bool,
    /// Messages with the same key are delivered in publish order, even across group members.
    pub ordering_per_key: bool,
    /// Deliveries are acknowledged: unacknowledged messages are delivered again.
    pub acknowledgements: bool,
    /// `nack` puts a message back to be delivered again, with the attempt count raised.
    pub redelivery: bool,
    /// `nack` with a delay is honoured: the redelivery waits at least that long.
    pub delayed_redelivery: bool,
    /// A subscription can start from an offset or a timestamp in retained history.
    pub replay: bool,
    /// A subscription can start from an integer offset.
    pub offset_replay: bool,
    /// Headers travel as native broker headers rather than inside an envelope.
    pub native_headers: bool,
    /// Subscriptions may use wildcard patterns (`orders.*`).
    pub pattern_subscriptions: bool,
    /// Batches published one after another keep that order even when the next is started
    /// before the previous was answered: each hands all its messages to the connection as soon
    /// as it is first polled (one pipeline), so a caller may keep two in flight.
    pub ordered_batches: bool,
}
