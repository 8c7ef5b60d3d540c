//! The pure half of the injector: a Pod and the injector's settings in, the
//! JSON patch that adds the `roster-agent` sidecar out. No I/O, no clock.
//!
//! What a pod with `roster.dev/inject: "true"` gets:
//! - `roster-agent` (same image, its lean `roster-agent` binary: the same
//!   CLI as `roster agent`, ~half the resident memory) as a native sidecar
//!   (an initContainer with `restartPolicy: Always`) or, for clusters older
//!   than 1.29, a classic container; port 9090 named `vitals`, downward-API
//!   env, startup/readiness/liveness probes on the vitals `/healthz`, small
//!   resources, a restricted securityContext, `preStop: roster-agent drain`;
//! - `preStop: sleep` for the drain period on every app container that has
//!   no `preStop` of its own, and a `terminationGracePeriodSeconds` long
//!   enough for both;
//! - Prometheus scrape annotations for `/telemetry` on the vitals port
//!   (unless the pod already has `prometheus.io/*` annotations of its own).

use std::collections::BTreeMap;
use std::time::Duration;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    ServiceAccountTokenProjection, SleepAction, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

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
/// Time the app gets after the drain, beyond the preStop sleep.
const APP_STOP_SECONDS: i64 = 15;

/// Where the agent's registration token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Registration is open (`registration.token_file: null` on the LBs).
    None,
    /// A Secret of this name in the pod's namespace, key `token`.
    Secret { name: String },
    /// A projected ServiceAccount token for `registration.kubernetes_auth`.
    ServiceAccount {
        audience: String,
        expiration_seconds: i64,
    },
}

/// The injector's settings (flags of `roster inject`, set by the chart).
#[derive(Debug, Clone)]
pub struct InjectConfig {
    /// Image of the agent (the same roster image).
    pub image: String,
    pub image_pull_policy: Option<String>,
    /// Native sidecar (initContainer, `restartPolicy: Always`) or classic container.
    pub native_sidecar: bool,
    /// Default LB control addresses, comma-separated `host:port`.
    pub load_balancers: String,
    /// The agent's vitals port.
    pub metrics_port: u16,
    pub announce_interval: Option<Duration>,
    /// How long the agent drains and the app keeps serving after termination starts.
    pub drain_period: Duration,
    /// Give app containers without a preStop hook `preStop: sleep` (k8s ≥ 1.30).
    pub app_pre_stop_sleep: bool,
    pub token: TokenSource,
    pub resources: ResourceRequirements,
    /// Add `prometheus.io/*` scrape annotations for the agent's `/telemetry`.
    pub scrape_annotations: bool,
    /// The LBs' `health_check.interval`: agents stay not-ready at least
    /// this long when draining (None: the agent's default).
    pub health_interval: Option<Duration>,
    /// Secrets (in the pod's namespace) for pulling the agent image; added
    /// to the pod's `imagePullSecrets` when missing.
    pub image_pull_secrets: Vec<String>,
    /// The agent's uid and gid; None leaves them to the platform (OpenShift's
    /// restricted SCC assigns one per namespace and refuses others).
    pub run_as_user: Option<i64>,
    /// Agents log JSON lines (`ROSTER_LOG_FORMAT=json`).
    pub log_json: bool,
}

/// Which webhook asked: they differ only in what a pod without the
/// annotation gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptIn {
    /// The pod's own `roster.dev/inject: "true"` asks (any namespace).
    Annotation,
    /// The namespace is labelled `roster.dev/inject=enabled`: every pod is
    /// injected unless annotated `roster.dev/inject: "false"`.
    Namespace,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            image: format!("roster:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: None,
            native_sidecar: true,
            load_balancers: "roster-lb-control.roster.svc:8080".into(),
            metrics_port: 9090,
            announce_interval: None,
            drain_period: Duration::from_secs(15),
            app_pre_stop_sleep: true,
            token: TokenSource::None,
            resources: default_resources(),
            scrape_annotations: true,
            health_interval: None,
            image_pull_secrets: Vec::new(),
            run_as_user: Some(NONROOT_ID),
            log_json: false,
        }
    }
}

/// Small requests and limits: the agent announces, probes and serves vitals.
pub fn default_resources() -> ResourceRequirements {
    let q = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect::<BTreeMap<_, _>>()
    };
    ResourceRequirements {
        requests: Some(q(&[("cpu", "10m"), ("memory", "16Mi")])),
        limits: Some(q(&[("cpu", "200m"), ("memory", "64Mi")])),
        ..Default::default()
    }
}

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

/// The outcome for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Injection {
    /// Left alone, with the reason (not annotated, already injected).
    Skipped(&'static str),
    /// The JSON patch to apply.
    Patched(Patch),
}

/// Decide and build the patch for `pod` (annotation opt-in). Pure: same
/// input, same patch.
pub fn inject(pod: &Pod, cfg: &InjectConfig) -> Result<Injection, InjectError> {
    inject_with(pod, cfg, OptIn::Annotation)
}

/// [`inject`], for the webhook `opt_in` names.
pub fn inject_with(pod: &Pod, cfg: &InjectConfig, opt_in: OptIn) -> Result<Injection, InjectError> {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let said = annotations.get(INJECT_ANNOTATION).map(|v| v.trim());
    let wanted = match opt_in {
        OptIn::Annotation => said.is_some_and(|v| v.eq_ignore_ascii_case("true")),
        OptIn::Namespace => !said.is_some_and(|v| v.eq_ignore_ascii_case("false")),
    };
    if !wanted {
        return Ok(Injection::Skipped(match opt_in {
            OptIn::Annotation => "no roster.dev/inject: \"true\" annotation",
            OptIn::Namespace => "opted out with roster.dev/inject: \"false\"",
        }));
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let has_agent = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == AGENT_CONTAINER);
    if has_agent {
        return Ok(Injection::Skipped("already injected"));
    }

    let app_port = app_port(pod, annotations.get(APP_PORT_ANNOTATION))?;
    check_port_conflicts(pod, app_port, cfg.metrics_port)?;
    let load_balancers = match annotations.get(LB_ANNOTATION) {
        Some(v) => parse_lb_list(v)?,
        None => cfg.load_balancers.clone(),
    };
    let health = match annotations.get(HEALTH_PATH_ANNOTATION) {
        Some(path) => Some(health_url(path, app_port)?),
        None => None,
    };
    let identity = AgentIdentity {
        service: super::resolve::service(pod)?,
        protocol: super::resolve::app_protocol(pod, app_port)?,
    };
    if cfg.token != TokenSource::None
        && spec
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == TOKEN_VOLUME)
    {
        return Err(InjectError::VolumeConflict);
    }

    let mut ops = Vec::new();
    let drain_secs = ceil_secs(cfg.drain_period);

    // Metadata: scrape annotations and the injected label.
    if cfg.scrape_annotations && !annotations.keys().any(|k| k.starts_with("prometheus.io/")) {
        for (k, v) in [
            ("prometheus.io/scrape", "true".to_string()),
            ("prometheus.io/port", cfg.metrics_port.to_string()),
            ("prometheus.io/path", "/telemetry".to_string()),
        ] {
            ops.push(add(&["metadata", "annotations", k], json!(v)));
        }
    }
    if pod.metadata.labels.is_none() {
        ops.push(add(&["metadata", "labels"], json!({})));
    }
    ops.push(add(&["metadata", "labels", INJECTED_LABEL], json!("true")));

    // The token volume.
    if let Some(volume) = token_volume(&cfg.token) {
        let volume = serde_json::to_value(volume)?;
        if spec.volumes.is_none() {
            ops.push(add(&["spec", "volumes"], json!([volume])));
        } else {
            ops.push(add(&["spec", "volumes", "-"], volume));
        }
    }

    // The agent image may live in a private registry.
    let have: Vec<&str> = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.as_str())
        .collect();
    let missing: Vec<Value> = cfg
        .image_pull_secrets
        .iter()
        .filter(|n| !have.contains(&n.as_str()))
        .map(|n| json!({ "name": n }))
        .collect();
    if !missing.is_empty() {
        if spec.image_pull_secrets.is_none() {
            ops.push(add(&["spec", "imagePullSecrets"], json!(missing)));
        } else {
            ops.extend(
                missing
                    .into_iter()
                    .map(|m| add(&["spec", "imagePullSecrets", "-"], m)),
            );
        }
    }

    // App containers keep serving through the drain.
    if cfg.app_pre_stop_sleep {
        let sleep = LifecycleHandler {
            sleep: Some(SleepAction {
                seconds: drain_secs,
            }),
            ..Default::default()
        };
        for (i, c) in spec.containers.iter().enumerate() {
            let idx = i.to_string();
            match &c.lifecycle {
                None => ops.push(add(
                    &["spec", "containers", &idx, "lifecycle"],
                    serde_json::to_value(Lifecycle {
                        pre_stop: Some(sleep.clone()),
                        ..Default::default()
                    })?,
                )),
                Some(l) if l.pre_stop.is_none() => ops.push(add(
                    &["spec", "containers", &idx, "lifecycle", "preStop"],
                    serde_json::to_value(&sleep)?,
                )),
                Some(_) => {}
            }
        }
    }

    // The agent itself.
    let agent = serde_json::to_value(agent_container(
        cfg,
        app_port,
        &load_balancers,
        health.as_deref(),
        &identity,
    ))?;
    if cfg.native_sidecar {
        if spec.init_containers.is_none() {
            ops.push(add(&["spec", "initContainers"], json!([agent])));
        } else {
            // After the pod's own init containers: they may need the network
            // but never roster, and the agent must be up before the app.
            ops.push(add(&["spec", "initContainers", "-"], agent));
        }
    } else {
        ops.push(add(&["spec", "containers", "-"], agent));
    }

    // Enough grace for the drain and the app's own shutdown.
    let needed = drain_secs + APP_STOP_SECONDS;
    if spec.termination_grace_period_seconds.unwrap_or(30) < needed {
        ops.push(add(
            &["spec", "terminationGracePeriodSeconds"],
            json!(needed),
        ));
    }
    Ok(Injection::Patched(Patch(ops)))
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

fn ceil_secs(d: Duration) -> i64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(s).unwrap_or(i64::MAX)
}

/// `roster.dev/app-port` (a number or a containerPort name), else the first
/// TCP containerPort of the first container that declares one.
fn app_port(pod: &Pod, annotation: Option<&String>) -> Result<u16, InjectError> {
    let containers = pod.spec.as_ref().map(|s| &s.containers[..]).unwrap_or(&[]);
    let ports = || containers.iter().flat_map(|c| c.ports.iter().flatten());
    if let Some(value) = annotation {
        let value = value.trim();
        if let Ok(n) = value.parse::<u16>() {
            if n == 0 {
                return Err(InjectError::Annotation {
                    annotation: APP_PORT_ANNOTATION,
                    message: "port 0 is not a port".into(),
                });
            }
            return Ok(n);
        }
        return ports()
            .find(|p| p.name.as_deref() == Some(value))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| InjectError::Annotation {
                annotation: APP_PORT_ANNOTATION,
                message: format!(
                    "{value:?} is neither a port number (1-65535) nor the name of a containerPort"
                ),
            });
    }
    ports()
        .find(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p != 0)
        .ok_or(InjectError::NoAppPort)
}

/// Two processes in one pod cannot both bind the vitals port.
fn check_port_conflicts(pod: &Pod, app_port: u16, metrics_port: u16) -> Result<(), InjectError> {
    let spec = pod.spec.as_ref();
    for c in spec.map(|s| &s.containers[..]).unwrap_or(&[]).iter().chain(
        spec.and_then(|s| s.init_containers.as_deref())
            .unwrap_or(&[])
            .iter(),
    ) {
        if c.ports
            .iter()
            .flatten()
            .any(|p| p.container_port == i32::from(metrics_port))
        {
            return Err(InjectError::PortConflict {
                container: c.name.clone(),
                port: metrics_port,
            });
        }
    }
    if app_port == metrics_port {
        return Err(InjectError::Annotation {
            annotation: APP_PORT_ANNOTATION,
            message: format!("port {app_port} is the agent's vitals port"),
        });
    }
    Ok(())
}

/// A comma-separated list of `host:port`, normalized (no blanks).
fn parse_lb_list(value: &str) -> Result<String, InjectError> {
    let bad = |message: String| InjectError::Annotation {
        annotation: LB_ANNOTATION,
        message,
    };
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (host, port) = item
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("{item:?} is not host:port")))?;
        let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c));
        if !port_ok || !host_ok {
            return Err(bad(format!("{item:?} is not host:port")));
        }
        out.push(item);
    }
    if out.is_empty() {
        return Err(bad("no address".into()));
    }
    Ok(out.join(","))
}

fn health_url(path: &str, app_port: u16) -> Result<String, InjectError> {
    let path = path.trim();
    let ok = path.starts_with('/')
        && path
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '#' && c != '\\');
    if !ok {
        return Err(InjectError::Annotation {
            annotation: HEALTH_PATH_ANNOTATION,
            message: format!("{path:?} must be an absolute URL path such as /healthz"),
        });
    }
    Ok(format!("http://127.0.0.1:{app_port}{path}"))
}

fn token_volume(token: &TokenSource) -> Option<Volume> {
    match token {
        TokenSource::None => None,
        TokenSource::Secret { name } => Some(Volume {
            name: TOKEN_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.clone()),
                // A namespace without the Secret still runs its pods: the
                // agent then reports the missing token (log, ready:false)
                // instead of the pod never starting.
                optional: Some(true),
                items: Some(vec![KeyToPath {
                    key: "token".into(),
                    path: "token".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        TokenSource::ServiceAccount {
            audience,
            expiration_seconds,
        } => Some(Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(audience.clone()),
                        expiration_seconds: Some(*expiration_seconds),
                        path: "token".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn vitals_probe(period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String(VITALS_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(1),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// What the agent registers as, read off the pod (see [`super::resolve`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentIdentity {
    /// `ROSTER_SERVICE`.
    pub service: Option<String>,
    /// `ROSTER_APP_PROTOCOL`: `http1` or `h2c`.
    pub protocol: Option<&'static str>,
}

/// The `roster-agent` container.
pub fn agent_container(
    cfg: &InjectConfig,
    app_port: u16,
    load_balancers: &str,
    health: Option<&str>,
    identity: &AgentIdentity,
) -> Container {
    let mut env_vars = vec![
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("POD_IP", "status.podIP"),
        env("ROSTER_DISCOVERY_LB", load_balancers),
        env("ROSTER_METRICS_PORT", cfg.metrics_port.to_string()),
        env("ROSTER_APP_PORT", app_port.to_string()),
        env(
            "ROSTER_DRAIN_PERIOD",
            humantime::format_duration(cfg.drain_period).to_string(),
        ),
    ];
    if let Some(every) = cfg.announce_interval {
        env_vars.push(env(
            "ROSTER_ANNOUNCE_INTERVAL",
            humantime::format_duration(every).to_string(),
        ));
    }
    if let Some(every) = cfg.health_interval {
        env_vars.push(env(
            "ROSTER_HEALTH_INTERVAL",
            humantime::format_duration(every).to_string(),
        ));
    }
    if let Some(url) = health {
        env_vars.push(env("ROSTER_APP_HEALTH", url));
    }
    if cfg.log_json {
        env_vars.push(env("ROSTER_LOG_FORMAT", "json"));
    }
    if let Some(service) = &identity.service {
        env_vars.push(env("ROSTER_SERVICE", service.as_str()));
    }
    if let Some(protocol) = identity.protocol {
        env_vars.push(env("ROSTER_APP_PROTOCOL", protocol));
    }
    let mut mounts = None;
    if cfg.token != TokenSource::None {
        env_vars.push(env("ROSTER_TOKEN_FILE", format!("{TOKEN_DIR}/token")));
        mounts = Some(vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]);
    }
    Container {
        name: AGENT_CONTAINER.into(),
        image: Some(cfg.image.clone()),
        image_pull_policy: cfg.image_pull_policy.clone(),
        command: Some(vec![AGENT_BINARY.into()]),
        args: None,
        env: Some(env_vars),
        ports: Some(vec![ContainerPort {
            name: Some(VITALS_PORT_NAME.into()),
            container_port: i32::from(cfg.metrics_port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // A native sidecar's startup probe holds the app back until the
        // agent serves its vitals.
        startup_probe: cfg.native_sidecar.then(|| vitals_probe(1, 30)),
        readiness_probe: Some(vitals_probe(5, 3)),
        liveness_probe: Some(vitals_probe(10, 3)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![AGENT_BINARY.into(), "drain".into()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: Some(cfg.resources.clone()),
        restart_policy: cfg.native_sidecar.then(|| "Always".into()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: cfg.run_as_user,
            run_as_group: cfg.run_as_user,
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: mounts,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn annotated(extra: Value, spec: Value) -> Pod {
        let mut annotations = json!({ INJECT_ANNOTATION: "true" });
        if let (Some(a), Some(e)) = (annotations.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        pod(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "web-1", "namespace": "shop", "annotations": annotations },
            "spec": spec,
        }))
    }

    fn web_spec() -> Value {
        json!({
            "containers": [{
                "name": "web", "image": "nginx",
                "ports": [{ "name": "http", "containerPort": 8080, "protocol": "TCP" }]
            }],
            "terminationGracePeriodSeconds": 30
        })
    }

    /// Apply the patch like the API server would and return the pod.
    fn patched(p: &Pod, cfg: &InjectConfig) -> Pod {
        let Injection::Patched(patch) = inject(p, cfg).expect("inject") else {
            panic!("expected a patch")
        };
        let mut doc = serde_json::to_value(p).unwrap();
        json_patch::patch(&mut doc, &patch).expect("patch applies");
        serde_json::from_value(doc).expect("still a pod")
    }

    fn agent(p: &Pod) -> Container {
        let spec = p.spec.as_ref().unwrap();
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .find(|c| c.name == AGENT_CONTAINER)
            .cloned()
            .expect("agent container")
    }

    fn env_of(c: &Container, name: &str) -> Option<String> {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    #[test]
    fn skips_pods_without_the_annotation() {
        let p = pod(json!({ "metadata": { "name": "x" }, "spec": web_spec() }));
        assert!(matches!(
            inject(&p, &InjectConfig::default()),
            Ok(Injection::Skipped(_))
        ));
        let p = pod(json!({
            "metadata": { "name": "x", "annotations": { INJECT_ANNOTATION: "false" } },
            "spec": web_spec()
        }));
        assert!(matches!(
            inject(&p, &InjectConfig::default()),
            Ok(Injection::Skipped(_))
        ));
    }

    #[test]
    fn native_sidecar_with_env_ports_probes_and_drain() {
        let cfg = InjectConfig::default();
        let p = patched(&annotated(json!({}), web_spec()), &cfg);
        let spec = p.spec.as_ref().unwrap();
        let inits = spec.init_containers.as_ref().expect("initContainers");
        assert_eq!(inits.len(), 1);
        let a = agent(&p);
        assert_eq!(a.restart_policy.as_deref(), Some("Always"));
        assert_eq!(a.image.as_deref(), Some(cfg.image.as_str()));
        assert_eq!(a.command.as_deref(), Some(&[AGENT_BINARY.to_string()][..]));
        assert_eq!(a.args, None);
        let port = &a.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.container_port, port.name.as_deref()),
            (9090, Some("vitals"))
        );
        assert_eq!(env_of(&a, "ROSTER_APP_PORT").as_deref(), Some("8080"));
        assert_eq!(env_of(&a, "ROSTER_METRICS_PORT").as_deref(), Some("9090"));
        assert_eq!(
            env_of(&a, "ROSTER_DISCOVERY_LB").as_deref(),
            Some("roster-lb-control.roster.svc:8080")
        );
        assert_eq!(env_of(&a, "ROSTER_DRAIN_PERIOD").as_deref(), Some("15s"));
        for (name, path) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_IP", "status.podIP"),
        ] {
            let e = a.env.iter().flatten().find(|e| e.name == name).unwrap();
            let field = e.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
            assert_eq!(field.field_path, path);
        }
        assert!(a.readiness_probe.is_some() && a.startup_probe.is_some());
        let drain = a.lifecycle.unwrap().pre_stop.unwrap().exec.unwrap();
        assert_eq!(
            drain.command.unwrap(),
            [AGENT_BINARY, "drain"].map(String::from)
        );
        let sc = a.security_context.unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        // The app keeps serving through the drain.
        let web = &spec.containers[0];
        let sleep = web.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
        assert_eq!(sleep.sleep.as_ref().unwrap().seconds, 15);
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        let ann = p.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann["prometheus.io/port"], "9090");
        assert_eq!(ann["prometheus.io/path"], "/telemetry");
        assert_eq!(p.metadata.labels.as_ref().unwrap()[INJECTED_LABEL], "true");
    }

    #[test]
    fn classic_sidecar_is_a_container() {
        let cfg = InjectConfig {
            native_sidecar: false,
            ..Default::default()
        };
        let p = patched(&annotated(json!({}), web_spec()), &cfg);
        let spec = p.spec.as_ref().unwrap();
        assert!(spec.init_containers.is_none());
        assert_eq!(spec.containers.len(), 2);
        assert_eq!(spec.containers[1].name, AGENT_CONTAINER);
        assert!(spec.containers[1].restart_policy.is_none());
        assert!(spec.containers[1].startup_probe.is_none());
        // Only the app gets the sleep; the agent has its drain.
        assert!(
            spec.containers[0]
                .lifecycle
                .as_ref()
                .unwrap()
                .pre_stop
                .as_ref()
                .unwrap()
                .sleep
                .is_some()
        );
    }

    #[test]
    fn injection_is_idempotent() {
        let cfg = InjectConfig::default();
        let once = patched(&annotated(json!({}), web_spec()), &cfg);
        assert_eq!(
            inject(&once, &cfg).unwrap(),
            Injection::Skipped("already injected")
        );
        let classic = InjectConfig {
            native_sidecar: false,
            ..Default::default()
        };
        let once = patched(&annotated(json!({}), web_spec()), &classic);
        assert!(matches!(inject(&once, &cfg), Ok(Injection::Skipped(_))));
    }

    #[test]
    fn annotations_override_port_lb_and_health() {
        let p = annotated(
            json!({
                APP_PORT_ANNOTATION: "http",
                LB_ANNOTATION: "lb-a.edge.svc:8080, lb-b.edge.svc:8080",
                HEALTH_PATH_ANNOTATION: "/ready"
            }),
            web_spec(),
        );
        let a = agent(&patched(&p, &InjectConfig::default()));
        assert_eq!(env_of(&a, "ROSTER_APP_PORT").as_deref(), Some("8080"));
        assert_eq!(
            env_of(&a, "ROSTER_DISCOVERY_LB").as_deref(),
            Some("lb-a.edge.svc:8080,lb-b.edge.svc:8080")
        );
        assert_eq!(
            env_of(&a, "ROSTER_APP_HEALTH").as_deref(),
            Some("http://127.0.0.1:8080/ready")
        );
    }

    #[test]
    fn pods_without_ports_need_the_annotation() {
        let spec = json!({ "containers": [{ "name": "app", "image": "x" }] });
        let err = inject(
            &annotated(json!({}), spec.clone()),
            &InjectConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(APP_PORT_ANNOTATION), "{err}");
        let p = patched(
            &annotated(json!({ APP_PORT_ANNOTATION: "3000" }), spec),
            &InjectConfig::default(),
        );
        assert_eq!(
            env_of(&agent(&p), "ROSTER_APP_PORT").as_deref(),
            Some("3000")
        );
    }

    #[test]
    fn bad_annotations_are_named() {
        let cases = [
            (APP_PORT_ANNOTATION, "web"),
            (APP_PORT_ANNOTATION, "0"),
            (APP_PORT_ANNOTATION, "9090"),
            (LB_ANNOTATION, "no-port"),
            (LB_ANNOTATION, " , "),
            (HEALTH_PATH_ANNOTATION, "healthz"),
        ];
        for (key, value) in cases {
            let err = inject(
                &annotated(json!({ key: value }), web_spec()),
                &InjectConfig::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(key), "{key}={value}: {err}");
        }
    }

    #[test]
    fn vitals_port_conflict_is_refused() {
        let spec = json!({ "containers": [{
            "name": "app", "image": "x",
            "ports": [{ "containerPort": 8080 }, { "containerPort": 9090 }]
        }]});
        let err = inject(&annotated(json!({}), spec), &InjectConfig::default()).unwrap_err();
        assert!(
            matches!(err, InjectError::PortConflict { port: 9090, .. }),
            "{err}"
        );
    }

    #[test]
    fn existing_hooks_init_containers_and_grace_are_respected() {
        let spec = json!({
            "initContainers": [{ "name": "migrate", "image": "x" }],
            "containers": [
                { "name": "web", "image": "x", "ports": [{ "containerPort": 8080 }],
                  "lifecycle": { "preStop": { "exec": { "command": ["/stop"] } } } },
                { "name": "side", "image": "y", "lifecycle": { "postStart": { "exec": { "command": ["/go"] } } } }
            ],
            "terminationGracePeriodSeconds": 5
        });
        let p = patched(&annotated(json!({}), spec), &InjectConfig::default());
        let s = p.spec.unwrap();
        let inits = s.init_containers.unwrap();
        assert_eq!(
            inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["migrate", AGENT_CONTAINER]
        );
        let web = s.containers[0]
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap();
        assert!(
            web.exec.is_some() && web.sleep.is_none(),
            "own preStop kept"
        );
        let side = s.containers[1].lifecycle.as_ref().unwrap();
        assert!(side.post_start.is_some() && side.pre_stop.as_ref().unwrap().sleep.is_some());
        assert_eq!(
            s.termination_grace_period_seconds,
            Some(30),
            "raised for the drain"
        );
    }

    #[test]
    fn own_prometheus_annotations_are_left_alone() {
        let p = patched(
            &annotated(
                json!({ "prometheus.io/scrape": "true", "prometheus.io/port": "8080" }),
                web_spec(),
            ),
            &InjectConfig::default(),
        );
        let ann = p.metadata.annotations.unwrap();
        assert_eq!(ann["prometheus.io/port"], "8080");
        assert!(!ann.contains_key("prometheus.io/path"));
    }

    #[test]
    fn token_sources_mount_a_volume() {
        for token in [
            TokenSource::Secret {
                name: "roster-registration-token".into(),
            },
            TokenSource::ServiceAccount {
                audience: "roster".into(),
                expiration_seconds: 3600,
            },
        ] {
            let cfg = InjectConfig {
                token: token.clone(),
                ..Default::default()
            };
            let p = patched(&annotated(json!({}), web_spec()), &cfg);
            let a = agent(&p);
            assert_eq!(
                env_of(&a, "ROSTER_TOKEN_FILE").as_deref(),
                Some("/var/run/secrets/roster/token")
            );
            assert_eq!(a.volume_mounts.unwrap()[0].name, TOKEN_VOLUME);
            let v = p.spec.unwrap().volumes.unwrap();
            assert_eq!(v.len(), 1);
            match token {
                TokenSource::Secret { .. } => assert!(v[0].secret.is_some()),
                _ => {
                    let proj = v[0].projected.as_ref().unwrap().sources.as_ref().unwrap();
                    let sat = proj[0].service_account_token.as_ref().unwrap();
                    assert_eq!(sat.audience.as_deref(), Some("roster"));
                }
            }
        }
    }

    #[test]
    fn sleep_can_be_turned_off() {
        let cfg = InjectConfig {
            app_pre_stop_sleep: false,
            ..Default::default()
        };
        let p = patched(&annotated(json!({}), web_spec()), &cfg);
        assert!(p.spec.unwrap().containers[0].lifecycle.is_none());
    }
}
