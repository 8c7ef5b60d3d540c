//! Every name the injector puts on or reads off a pod: annotations, labels,
//! the sidecar's container, port, volume and paths. Declared once; the chart
//! and the docs use the same strings.

/// The annotation that asks for injection (value `"true"`), or, in a
/// namespace labelled for injection, opts the pod out (value `"false"`).
pub const INJECT_ANNOTATION: &str = "roster.dev/inject";
/// The namespace label that opts every pod of the namespace in (`enabled`).
pub const NAMESPACE_LABEL: &str = "roster.dev/inject";
/// That label's value for opted-in namespaces (`disabled` opts a namespace out).
pub const NAMESPACE_ENABLED: &str = "enabled";
/// Port (number or containerPort name) the app serves traffic on.
pub const APP_PORT_ANNOTATION: &str = "roster.dev/app-port";
/// LB control addresses (`host:port`, comma-separated) overriding the chart's.
pub const LB_ANNOTATION: &str = "roster.dev/lb";
/// HTTP path the agent probes on the app port to decide `ready`.
pub const HEALTH_PATH_ANNOTATION: &str = "roster.dev/health-path";
/// Label put on injected pods (the chart's PodMonitor selects it).
pub const INJECTED_LABEL: &str = "roster.dev/injected";
/// Name of the injected container.
pub const AGENT_CONTAINER: &str = "roster-agent";
/// Name of the agent's port.
pub const VITALS_PORT_NAME: &str = "vitals";
/// Where the image keeps the binary (see the Dockerfile).
pub const AGENT_BINARY: &str = "/usr/local/bin/roster-agent";
/// Volume holding the agent's bearer token, when registration needs one.
pub const TOKEN_VOLUME: &str = "roster-agent-token";
/// Where that volume is mounted in the agent.
pub const TOKEN_DIR: &str = "/var/run/secrets/roster";

/// UID/GID of the distroless `nonroot` user the image runs as.
pub const NONROOT_ID: i64 = 65532;

/// The service the pod's backend registers under.
pub const SERVICE_ANNOTATION: &str = "roster.dev/service";
/// The protocol the app speaks on its port (`http1` or `h2c`).
pub const APP_PROTOCOL_ANNOTATION: &str = "roster.dev/app-protocol";
/// The recommended label naming the application.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
