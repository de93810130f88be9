//! Per-message options and the relay's settings.
//!
//! Plain data with defaults; nothing here does I/O.

use std::time::Duration;

use uuid::Uuid;

use super::breaker::BreakerConfig;

/// Options for one outgoing message. The default is version 1, a new
/// activity, no partition key, no expiry, the relay's request timeout.
///
/// ```
/// use std::time::Duration;
/// use exocom::relay::MessageOptions;
///
/// let opts = MessageOptions::new().version(2).partition_key("customer-42").ttl(Duration::from_secs(30));
/// assert_eq!(opts.version_number(), 2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageOptions {
    pub(crate) version: Option<u32>,
    pub(crate) origin_id: Option<Uuid>,
    pub(crate) partition_key: Option<String>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
}

impl MessageOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The message's API version (default 1).
    pub fn version(mut self, version: u32) -> Self {
        self.version = Some(version);
        self
    }

    /// The activity this message belongs to (e.g. the `origin_id` of the
    /// message being handled). Default: the message starts a new activity.
    pub fn origin_id(mut self, origin_id: Uuid) -> Self {
        self.origin_id = Some(origin_id);
        self
    }

    /// Messages with the same key go to the same instance of a service, in order.
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }

    /// The message must not be delivered after this long.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// This call's timeout instead of the relay's request timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The version that will be sent (1 unless set).
    pub fn version_number(&self) -> u32 {
        self.version.unwrap_or(1)
    }
}

/// Everything the builder collects, fixed once connected.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) server_name: String,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_outstanding_requests: usize,
    pub(crate) prefetch: u32,
    pub(crate) reply_buffer: usize,
    pub(crate) command_buffer: usize,
    pub(crate) dedup_capacity: usize,
    pub(crate) dedup_max_age: Duration,
    pub(crate) breaker: BreakerConfig,
    pub(crate) reconnect_base: Duration,
    pub(crate) reconnect_cap: Duration,
    pub(crate) retry_initial_connect: bool,
    pub(crate) drain_timeout: Duration,
    pub(crate) keepalive: Duration,
    pub(crate) client_name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server_name: "localhost".into(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_outstanding_requests: 1024,
            prefetch: 64,
            reply_buffer: 256,
            command_buffer: 1024,
            dedup_capacity: 10_000,
            dedup_max_age: Duration::from_secs(600),
            breaker: BreakerConfig::default(),
            reconnect_base: Duration::from_millis(100),
            reconnect_cap: Duration::from_secs(10),
            retry_initial_connect: false,
            drain_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(15),
            client_name: concat!("exocom-relay/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}
