//! Why a pod cannot be injected.

use super::names::{AGENT_CONTAINER, APP_PORT_ANNOTATION, TOKEN_VOLUME};

/// Why a pod that asked for injection cannot get it. The webhook denies the
/// pod with this message: a pod that silently runs without its agent would
/// never receive traffic, which is harder to find than a clear denial.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {annotation}: {message}")]
    Annotation {
        annotation: &'static str,
        message: String,
    },
    #[error(
        "no app port: no container declares a TCP containerPort; set the annotation {APP_PORT_ANNOTATION}"
    )]
    NoAppPort,
    #[error(
        "container {container:?} uses port {port}, which the {AGENT_CONTAINER} sidecar needs for its vitals"
    )]
    PortConflict { container: String, port: u16 },
    #[error("the pod already has a volume named {TOKEN_VOLUME}")]
    VolumeConflict,
    #[error("cannot serialize the patch: {0}")]
    Serialize(#[from] serde_json::Error),
}
