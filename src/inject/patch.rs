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

pub use super::error::InjectError;
use super::names::*;
use super::resolve::app_port;

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
    if let Some(reason) = not_wanted(&annotations, opt_in) {
        return Ok(Injection::Skipped(reason));
    }
    let spec = pod.spec.clone().unwrap_or_default();
    if has_agent(&spec) {
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

    let mut ops = metadata_ops(pod, &annotations, cfg);
    let drain_secs = ceil_secs(cfg.drain_period);
    spec_ops(&spec, cfg, &mut ops)?;
    if cfg.app_pre_stop_sleep {
        app_sleep_ops(&spec, drain_secs, &mut ops)?;
    }

    // The agent itself.
    let agent = serde_json::to_value(agent_container(
        cfg,
        app_port,
        &load_balancers,
        health.as_deref(),
        &identity,
    ))?;
    ops.push(agent_op(&spec, cfg.native_sidecar, agent));

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

/// Whether the pod already runs a `roster-agent` container (plain or init).
fn has_agent(spec: &k8s_openapi::api::core::v1::PodSpec) -> bool {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == AGENT_CONTAINER)
}

/// Add the agent as a native sidecar (an init container) or a plain container.
fn agent_op(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    native_sidecar: bool,
    agent: Value,
) -> PatchOperation {
    if native_sidecar {
        if spec.init_containers.is_none() {
            add(&["spec", "initContainers"], json!([agent]))
        } else {
            // After the pod's own init containers: they may need the network
            // but never roster, and the agent must be up before the app.
            add(&["spec", "initContainers", "-"], agent)
        }
    } else {
        add(&["spec", "containers", "-"], agent)
    }
}

/// Why the pod is left alone, or None when the webhook `opt_in` names
/// should inject it.
fn not_wanted(annotations: &BTreeMap<String, String>, opt_in: OptIn) -> Option<&'static str> {
    let said = annotations.get(INJECT_ANNOTATION).map(|v| v.trim());
    match opt_in {
        OptIn::Annotation if !said.is_some_and(|v| v.eq_ignore_ascii_case("true")) => {
            Some("no roster.dev/inject: \"true\" annotation")
        }
        OptIn::Namespace if said.is_some_and(|v| v.eq_ignore_ascii_case("false")) => {
            Some("opted out with roster.dev/inject: \"false\"")
        }
        _ => None,
    }
}

/// Scrape annotations (unless the pod has its own) and the injected label.
fn metadata_ops(
    pod: &Pod,
    annotations: &BTreeMap<String, String>,
    cfg: &InjectConfig,
) -> Vec<PatchOperation> {
    let mut ops = Vec::new();
    if cfg.scrape_annotations && !annotations.keys().any(|k| k.starts_with("prometheus.io/")) {
        // A namespace's pods may have no annotations at all.
        if pod.metadata.annotations.is_none() {
            ops.push(add(&["metadata", "annotations"], json!({})));
        }
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
    ops
}

/// The token volume, and the pull secrets the agent image needs.
fn spec_ops(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    cfg: &InjectConfig,
    ops: &mut Vec<PatchOperation>,
) -> Result<(), InjectError> {
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
    if missing.is_empty() {
        return Ok(());
    }
    if spec.image_pull_secrets.is_none() {
        ops.push(add(&["spec", "imagePullSecrets"], json!(missing)));
    } else {
        ops.extend(
            missing
                .into_iter()
                .map(|m| add(&["spec", "imagePullSecrets", "-"], m)),
        );
    }
    Ok(())
}

/// App containers without a preStop of their own keep serving through the drain.
fn app_sleep_ops(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    drain_secs: i64,
    ops: &mut Vec<PatchOperation>,
) -> Result<(), InjectError> {
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
    Ok(())
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

mod container;

use container::token_volume;
pub use container::{AgentIdentity, agent_container};

#[cfg(test)]
mod tests;
