//! SIGTERM and SIGINT, the two ways roster is asked to stop, installed in
//! one place so every command (lb, agent, inject, demo) hears them alike.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Which stop signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: Kubernetes ending the pod; finish gracefully.
    Term,
    /// SIGINT: Ctrl-C.
    Int,
}

impl Stop {
    /// `SIGTERM` or `SIGINT`, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Term => "SIGTERM",
            Self::Int => "SIGINT",
        }
    }
}

/// Handlers for both signals. Create them before starting work: a signal
/// that arrives before the handler exists kills the process.
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT.
    pub async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.term.recv() => Stop::Term,
            _ = self.int.recv() => Stop::Int,
        }
    }
}

/// The next SIGTERM or SIGINT, for tasks that have nobody to report an
/// error to: without handlers it logs once and never returns (the process
/// then stops the default way, at the signal itself).
pub async fn next_stop() -> Stop {
    match StopSignals::new() {
        Ok(mut signals) => signals.recv().await,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            std::future::pending().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_raised_signal_is_received() {
        let mut signals = StopSignals::new().unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGINT).unwrap();
        assert_eq!(signals.recv().await, Stop::Int);
    }
}
