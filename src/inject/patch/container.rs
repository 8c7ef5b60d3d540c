//! The `roster-agent` container and its token volume.

use super::*;
use crate::config::env as agent_env_name;

pub(super) fn token_volume(token: &TokenSource) -> Option<Volume> {
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

/// What the agent registers as, read off the pod (see [`resolve`](crate::inject::resolve)).
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
    Container {
        name: AGENT_CONTAINER.into(),
        image: Some(cfg.image.clone()),
        image_pull_policy: cfg.image_pull_policy.clone(),
        command: Some(vec![AGENT_BINARY.into()]),
        args: None,
        env: Some(agent_env(cfg, app_port, load_balancers, health, identity)),
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
        lifecycle: Some(drain_on_stop()),
        resources: Some(cfg.resources.clone()),
        restart_policy: cfg.native_sidecar.then(|| "Always".into()),
        security_context: Some(locked_down(cfg.run_as_user)),
        volume_mounts: token_mounts(&cfg.token),
        ..Default::default()
    }
}

/// The agent's `ROSTER_*` settings and the Downward API variables it reads.
fn agent_env(
    cfg: &InjectConfig,
    app_port: u16,
    load_balancers: &str,
    health: Option<&str>,
    identity: &AgentIdentity,
) -> Vec<EnvVar> {
    let mut env_vars = vec![
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("POD_IP", "status.podIP"),
        env(agent_env_name::DISCOVERY_LB, load_balancers),
        env(agent_env_name::METRICS_PORT, cfg.metrics_port.to_string()),
        env(agent_env_name::APP_PORT, app_port.to_string()),
        env(
            agent_env_name::DRAIN_PERIOD,
            humantime::format_duration(cfg.drain_period).to_string(),
        ),
    ];
    if let Some(every) = cfg.announce_interval {
        env_vars.push(env(
            agent_env_name::ANNOUNCE_INTERVAL,
            humantime::format_duration(every).to_string(),
        ));
    }
    if let Some(every) = cfg.health_interval {
        env_vars.push(env(
            agent_env_name::HEALTH_INTERVAL,
            humantime::format_duration(every).to_string(),
        ));
    }
    if let Some(url) = health {
        env_vars.push(env(agent_env_name::APP_HEALTH, url));
    }
    if cfg.log_json {
        env_vars.push(env(agent_env_name::LOG_FORMAT, "json"));
    }
    if let Some(service) = &identity.service {
        env_vars.push(env(agent_env_name::SERVICE, service.as_str()));
    }
    if let Some(protocol) = identity.protocol {
        env_vars.push(env(agent_env_name::APP_PROTOCOL, protocol));
    }
    if cfg.token != TokenSource::None {
        env_vars.push(env(
            agent_env_name::TOKEN_FILE,
            format!("{TOKEN_DIR}/token"),
        ));
    }
    env_vars
}

/// The token volume mounted read-only at [`TOKEN_DIR`], when there is a token.
fn token_mounts(token: &TokenSource) -> Option<Vec<VolumeMount>> {
    (*token != TokenSource::None).then(|| {
        vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]
    })
}

/// preStop runs `roster-agent drain`.
fn drain_on_stop() -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec![AGENT_BINARY.into(), "drain".into()]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Non-root, no privilege escalation, read-only root, no capabilities, seccomp.
fn locked_down(run_as_user: Option<i64>) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user,
        run_as_group: run_as_user,
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
    }
}
