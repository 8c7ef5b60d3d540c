//! Bounds on every listener: the time a client may take to send a request
//! head, the wait for the next piece of a body, how long an idle keep-alive
//! connection stays, and how many connections one listener holds.
//!
//! Each listener (proxy, control API, vitals port, webhook) owns a
//! [`ConnTable`](crate::limits::ConnTable), its own connection budget, so one port's clients cannot
//! take another's descriptors. Every accepted socket is wrapped in
//! [`Tracked`](crate::limits::Tracked), which enforces the head deadline and the idle timeout in
//! `poll_read` (whatever the server above it, hyper or pingora) and a write
//! timeout for clients that stop reading. The server tells the connection
//! when a request head is complete ([`ConnState::begin_request`](crate::limits::ConnState::begin_request)) and when
//! its answer is done ([`ConnState::end_request`](crate::limits::ConnState::end_request)).
//!
//! A full table sheds instead of queueing: a newcomer evicts the oldest
//! connection that is idle, then the oldest still sending its head, so slow
//! clients lose their slot while a request being served never does. Only
//! when every connection is busy is the newcomer refused.

mod table;
mod tracked;

pub use table::{Admission, ConnState, ConnTable, Shed};
pub use tracked::Tracked;

/// Answer to a newcomer when every slot is serving a request.
pub static FULL: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    crate::protocol::raw_refusal(
        http::StatusCode::SERVICE_UNAVAILABLE,
        &[("retry-after", "1")],
        "too many open connections",
    )
});

/// The soft open-file limit, raised to the hard limit first (each listener
/// sizes its share from it).
pub fn raise_fd_limit() -> u64 {
    if let Err(e) = rlimit::increase_nofile_limit(1 << 20) {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// `configured`, capped at `share` of the open-file limit so the process
/// keeps descriptors for its other listeners and its own outbound calls.
pub fn budget(name: &str, configured: usize, fd_limit: u64, share: f64) -> usize {
    let cap = ((fd_limit as f64 * share) as usize).max(16);
    if configured > cap {
        tracing::info!(
            listener = name,
            configured,
            cap,
            fd_limit,
            "max_connections capped at its share of the open-file limit"
        );
    }
    configured.min(cap)
}
