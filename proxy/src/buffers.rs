//! How much one connection may buffer, in one place.
//!
//! Between a fast upstream and a slow client, the proxy holds what one side has sent and
//! the other has not yet taken. hyper's defaults let that reach about 400 KB per HTTP/1
//! connection and several MB per HTTP/2 one (its client windows are 2 MB per stream, 5 MB
//! per connection), so a few hundred slow readers could take a sidecar's whole memory
//! limit. These bounds make back-pressure reach the fast side sooner instead: a full
//! buffer stops reading, and HTTP/2 flow control stops the peer's sending.

/// The most an HTTP/1 upstream connection reads ahead or queues to write.
pub(crate) const H1_UPSTREAM_BUF: usize = 64 * 1024;

/// The receive window of one HTTP/2 stream, both directions' receivers.
pub(crate) const H2_STREAM_WINDOW: u32 = 256 * 1024;

/// The receive window of one HTTP/2 connection, across its streams.
pub(crate) const H2_CONN_WINDOW: u32 = 1024 * 1024;

/// The most one HTTP/2 stream queues to send before its sender waits.
pub(crate) const H2_SEND_BUF: usize = 64 * 1024;
