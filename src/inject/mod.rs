//! `roster inject`: the mutating admission webhook that adds the
//! `roster-agent` sidecar to pods annotated `roster.dev/inject: "true"`.
//!
//! - [`patch`](crate::inject::patch): the pure decision, Pod + [`InjectConfig`](crate::inject::InjectConfig) → JSON patch.
//! - [`resolve`](crate::inject::resolve): the pod's service and app protocol, for the agent's env.
//! - [`server`](crate::inject::server): HTTPS, `POST /mutate`, `GET /healthz`; parse, answer, wrap.
//! - [`certs`](crate::inject::certs): CA and serving certificates (rcgen), the swappable rustls key.
//! - [`bootstrap`](crate::inject::bootstrap): TLS without cert-manager: a Secret and the caBundle.
//!
//! TLS comes either from `--tls-cert`/`--tls-key` (reloaded when the files
//! change; cert-manager's Secret, for instance) or, without them, from the
//! self-managed Secret that the webhook creates and renews itself.

pub mod bootstrap;
pub mod certs;
mod error;
pub mod names;
pub mod patch;
pub mod resolve;
pub mod server;
#[cfg(test)]
mod wiring;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args};
use k8s_openapi::api::core::v1::ResourceRequirements;
use tokio_rustls::TlsAcceptor;

pub use patch::{InjectConfig, Injection, OptIn, TokenSource, inject, inject_with};

use crate::Error;
use crate::config::{ConfigError, env as agent_env, parse_duration};
use crate::helm::is_quantity;

/// How often the TLS files are checked for a change.
const FILE_POLL: Duration = Duration::from_secs(2);
/// Time open connections get after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// `roster inject` flags; the chart sets them from its values.
#[derive(Debug, Clone, Args)]
pub struct InjectArgs {
    /// HTTPS listen address.
    #[arg(long, env = "ROSTER_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate (chain) file; reloaded when it changes. Without it the
    /// webhook manages its own CA and certificate in a Secret.
    #[arg(long, env = "ROSTER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key file for --tls-cert; reloaded when it changes.
    #[arg(long, env = "ROSTER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Write ca.crt, tls.crt and tls.key for --dns-name into DIR, then exit.
    #[arg(long, value_name = "DIR")]
    pub generate_cert: Option<PathBuf>,
    /// DNS names (or IPs) of the certificate --generate-cert writes; default: the Service's names.
    #[arg(long = "dns-name", value_name = "NAME")]
    pub dns_names: Vec<String>,

    /// Self-managed TLS: the Secret holding the CA and serving certificate.
    #[arg(long, env = "ROSTER_TLS_SECRET", default_value = "roster-injector-tls")]
    pub tls_secret: String,
    /// Self-managed TLS: the MutatingWebhookConfiguration whose caBundle to keep.
    #[arg(long, env = "ROSTER_WEBHOOK_CONFIG", default_value = "roster-injector")]
    pub webhook_config: String,
    /// The webhook's Service (the certificate names it).
    #[arg(long, env = "ROSTER_SERVICE", default_value = "roster-injector")]
    pub service: String,
    /// The webhook's namespace; default: the pod's own.
    #[arg(long, env = "ROSTER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Self-managed TLS: how often the Secret and caBundle are checked.
    #[arg(long, env = "ROSTER_RECONCILE_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub reconcile_interval: Duration,

    /// Image of the injected agent.
    #[arg(long, env = "ROSTER_AGENT_IMAGE", default_value = concat!("roster:", env!("CARGO_PKG_VERSION")))]
    pub agent_image: String,
    /// imagePullPolicy of the injected agent (default: the cluster's).
    #[arg(long, env = "ROSTER_AGENT_IMAGE_PULL_POLICY")]
    pub agent_image_pull_policy: Option<String>,
    /// Resources of the injected agent, as ResourceRequirements JSON.
    #[arg(long, env = "ROSTER_AGENT_RESOURCES")]
    pub agent_resources: Option<String>,
    /// Inject a native sidecar (initContainer, restartPolicy Always; k8s ≥ 1.29); false = a classic container.
    #[arg(long, env = "ROSTER_NATIVE_SIDECAR", default_value_t = true, action = ArgAction::Set)]
    pub native_sidecar: bool,
    /// LB control addresses injected agents announce to (comma-separated host:port).
    #[arg(
        long,
        env = agent_env::DISCOVERY_LB,
        default_value = "roster-lb-control.roster.svc:8080"
    )]
    pub discovery_lb: String,
    /// The agents' vitals port (default: the agent's, 9090).
    #[arg(long, env = agent_env::METRICS_PORT)]
    pub metrics_port: Option<u16>,
    /// The agents' heartbeat period (default: the agent's).
    #[arg(long, env = agent_env::ANNOUNCE_INTERVAL, value_parser = parse_duration)]
    pub announce_interval: Option<Duration>,
    /// The LBs' health_check.interval, passed to agents (they stay
    /// not-ready at least this long when draining; default: the agent's).
    #[arg(long, env = agent_env::HEALTH_INTERVAL, value_parser = parse_duration)]
    pub health_interval: Option<Duration>,
    /// Secrets for pulling the agent image (comma-separated names; each must
    /// exist in the pod's namespace), added to injected pods' imagePullSecrets.
    #[arg(long, env = "ROSTER_AGENT_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    pub agent_image_pull_secrets: Vec<String>,
    /// The agent's uid/gid; `none` leaves them to the platform (OpenShift).
    #[arg(long, env = "ROSTER_AGENT_RUN_AS_USER", default_value = "65532", value_parser = parse_uid)]
    pub agent_run_as_user: RunAs,
    /// The agents' log format: text or json (ROSTER_LOG_FORMAT on the agent).
    #[arg(long, env = "ROSTER_AGENT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub agent_log_format: String,
    /// How long agents drain, and apps keep serving, once a pod terminates.
    /// Longer than a standalone agent's 10s default: in a cluster the drain
    /// also covers EndpointSlice propagation and the app's preStop sleep.
    #[arg(long, env = agent_env::DRAIN_PERIOD, default_value = "15s", value_parser = parse_duration)]
    pub drain_period: Duration,
    /// Give app containers without a preStop hook `preStop: sleep` for the drain period (k8s ≥ 1.30).
    #[arg(long, env = "ROSTER_APP_PRE_STOP_SLEEP", default_value_t = true, action = ArgAction::Set)]
    pub app_pre_stop_sleep: bool,
    /// Add prometheus.io/* scrape annotations for the agents' /telemetry.
    #[arg(long, env = "ROSTER_SCRAPE_ANNOTATIONS", default_value_t = true, action = ArgAction::Set)]
    pub scrape_annotations: bool,
    /// Agents read their registration token from this Secret (key `token`) in their own namespace.
    #[arg(long, env = "ROSTER_TOKEN_SECRET", conflicts_with = "kubernetes_auth")]
    pub token_secret: Option<String>,
    /// Agents send a projected ServiceAccount token (LBs run with registration.kubernetes_auth).
    #[arg(long, env = "ROSTER_KUBERNETES_AUTH", default_value_t = false, action = ArgAction::Set)]
    pub kubernetes_auth: bool,
    /// Audience of that projected token.
    #[arg(long, env = "ROSTER_TOKEN_AUDIENCE", default_value = "roster")]
    pub token_audience: String,
    /// Lifetime of that projected token (kubelet renews it; ≥ 10m).
    #[arg(long, env = "ROSTER_TOKEN_EXPIRATION", default_value = "1h", value_parser = parse_duration)]
    pub token_expiration: Duration,
    /// Bounds on the webhook's connections (`--header-timeout`, ...).
    #[command(flatten)]
    pub limits: crate::config::limits::WebhookLimitArgs,
}

impl InjectArgs {
    /// The injection settings these flags describe.
    pub fn inject_config(&self) -> Result<InjectConfig, ConfigError> {
        let resources = match &self.agent_resources {
            None => patch::default_resources(),
            Some(json) => parse_resources(json).map_err(|message| ConfigError::Invalid {
                field: "--agent-resources",
                message,
            })?,
        };
        let token = self.token_source()?;
        if self.health_interval.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::Invalid {
                field: "--health-interval",
                message: "must be more than 0".into(),
            });
        }
        let image_pull_secrets: Vec<String> = self
            .agent_image_pull_secrets
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(bad) = image_pull_secrets
            .iter()
            .find(|s| !crate::agent::valid_id(s))
        {
            return Err(ConfigError::Invalid {
                field: "--agent-image-pull-secrets",
                message: format!("{bad:?} is not a Secret name"),
            });
        }
        let agent = crate::config::Config::default();
        let drain_period = self.drain_period;
        if drain_period.is_zero() {
            return Err(ConfigError::Invalid {
                field: "--drain-period",
                message: "must be more than 0".into(),
            });
        }
        Ok(InjectConfig {
            image: self.agent_image.clone(),
            image_pull_policy: self.agent_image_pull_policy.clone(),
            native_sidecar: self.native_sidecar,
            load_balancers: self.discovery_lb.clone(),
            metrics_port: self.metrics_port.unwrap_or(agent.discovery.metrics_port),
            announce_interval: self.announce_interval,
            drain_period,
            app_pre_stop_sleep: self.app_pre_stop_sleep,
            token,
            resources,
            scrape_annotations: self.scrape_annotations,
            health_interval: self.health_interval,
            image_pull_secrets,
            run_as_user: self.agent_run_as_user.0,
            log_json: self.agent_log_format == "json",
        })
    }
}

impl InjectArgs {
    /// Where injected agents get their registration token.
    fn token_source(&self) -> Result<TokenSource, ConfigError> {
        Ok(match (&self.token_secret, self.kubernetes_auth) {
            (Some(name), _) => TokenSource::Secret { name: name.clone() },
            (None, true) => {
                let secs = self.token_expiration.as_secs();
                if secs < 600 {
                    return Err(ConfigError::Invalid {
                        field: "--token-expiration",
                        message: "must be at least 10m (the API server's minimum)".into(),
                    });
                }
                TokenSource::ServiceAccount {
                    audience: self.token_audience.clone(),
                    expiration_seconds: i64::try_from(secs).unwrap_or(i64::MAX),
                }
            }
            (None, false) => TokenSource::None,
        })
    }
}

/// `--agent-run-as-user`: a uid, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs(pub Option<i64>);

fn parse_uid(s: &str) -> Result<RunAs, String> {
    match s.trim() {
        "" | "none" => Ok(RunAs(None)),
        n => match n.parse::<i64>() {
            // The image's user is not root; uid 0 would defeat runAsNonRoot.
            Ok(uid) if uid > 0 && uid <= i64::from(u32::MAX) => Ok(RunAs(Some(uid))),
            _ => Err(format!("{s:?}: a uid above 0, or none")),
        },
    }
}

/// Resources JSON as the API server will accept it: a typo or a bad
/// quantity here would otherwise only show when pods fail to be created.
fn parse_resources(json: &str) -> Result<ResourceRequirements, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("must be a JSON object")?;
    for (key, section) in obj {
        if key != "requests" && key != "limits" {
            return Err(format!("unknown key {key:?} (requests, limits)"));
        }
        let section = section
            .as_object()
            .ok_or_else(|| format!("{key} must be an object"))?;
        for (name, q) in section {
            let text = match q {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                other => return Err(format!("{key}.{name}: {other} is not a quantity")),
            };
            if !is_quantity(&text) {
                return Err(format!("{key}.{name}: {text:?} is not a quantity"));
            }
        }
    }
    // Numbers become strings: k8s-openapi's Quantity is a string.
    let normalized: serde_json::Map<_, _> = obj
        .iter()
        .map(|(k, section)| {
            let section = section
                .as_object()
                .into_iter()
                .flatten()
                .map(|(n, q)| {
                    let s = q.as_str().map_or_else(|| q.to_string(), String::from);
                    (n.clone(), serde_json::Value::String(s))
                })
                .collect();
            (k.clone(), serde_json::Value::Object(section))
        })
        .collect();
    serde_json::from_value(serde_json::Value::Object(normalized)).map_err(|e| e.to_string())
}

/// `--generate-cert DIR`: write a CA and a serving certificate, return the names used.
pub fn generate_cert(args: &InjectArgs, dir: &std::path::Path) -> Result<Vec<String>, Error> {
    let names = if args.dns_names.is_empty() {
        certs::service_dns_names(&args.service, args.namespace.as_deref().unwrap_or("roster"))
    } else {
        args.dns_names.clone()
    };
    certs::write_bundle(dir, &names)?;
    Ok(names)
}

/// Run the webhook until SIGTERM or SIGINT.
pub async fn run(args: InjectArgs) -> Result<(), Error> {
    let cfg = Arc::new(args.inject_config()?);
    // Bad limits fail before anything binds or talks to the API server.
    let mut given = crate::config::limits::WebhookLimits::default();
    args.limits.apply(&mut given);
    let mut limits = given.get();
    crate::config::limits::validate("webhook limits", &limits)?;
    let fd_limit = crate::limits::raise_fd_limit();
    limits.max_connections =
        crate::limits::budget("webhook", limits.max_connections, fd_limit, 0.5);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: args.listen,
            source,
        })?;
    let served = serving_cert(&args).await?;
    let acceptor = TlsAcceptor::from(Arc::new(certs::server_config(served)?));
    tracing::info!(
        listen = %args.listen,
        image = %cfg.image,
        native_sidecar = cfg.native_sidecar,
        lb = %cfg.load_balancers,
        "roster inject serving"
    );
    crate::serve::serve(
        crate::serve::Listener {
            listener,
            table: crate::limits::ConnTable::new("webhook", limits),
            max_body: server::MAX_REVIEW_BYTES,
            tls: Some(acceptor),
            info: crate::serve::remote,
        },
        server::router(cfg),
        shutdown_signal(),
        SHUTDOWN_GRACE,
    )
    .await;
    tracing::info!("roster inject stopped");
    Ok(())
}

/// The webhook's certificate: from `--tls-cert`/`--tls-key` (watched for
/// changes), else self-managed in a Secret (reconciled in the background).
async fn serving_cert(args: &InjectArgs) -> Result<Arc<certs::SwappableCert>, Error> {
    Ok(match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let (files, key) = certs::CertFiles::load(cert.clone(), key.clone())?;
            let served = certs::SwappableCert::new(key);
            tokio::spawn(certs::watch_files(files, Arc::clone(&served), FILE_POLL));
            tracing::info!(cert = %cert.display(), "TLS from files");
            served
        }
        _ => {
            let client = kube::Client::try_default()
                .await
                .map_err(bootstrap::BootstrapError::from)?;
            let namespace = args
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string());
            let sm = bootstrap::SelfManaged {
                dns_names: certs::service_dns_names(&args.service, &namespace),
                namespace,
                secret_name: args.tls_secret.clone(),
                webhook_config: args.webhook_config.clone(),
            };
            let bundle = bootstrap::initial_bundle(&client, &sm).await?;
            let key =
                certs::certified_key(bundle.cert.as_bytes(), bundle.key.as_bytes(), "Secret")?;
            let served = certs::SwappableCert::new(key);
            tracing::info!(secret = %sm.secret_name, webhook_config = %sm.webhook_config, "TLS self-managed");
            tokio::spawn(bootstrap::reconcile_loop(
                client,
                sm,
                Arc::clone(&served),
                bundle,
                args.reconcile_interval,
            ));
            served
        }
    })
}

async fn shutdown_signal() {
    let stop = crate::signals::next_stop().await;
    tracing::info!("{}: stopping", stop.name());
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        inject: InjectArgs,
    }

    fn config(args: &[&str]) -> Result<InjectConfig, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .expect("flags parse");
        cli.inject.inject_config()
    }

    #[test]
    fn flags_build_the_injection_settings() {
        let c = config(&[
            "--native-sidecar=false",
            "--discovery-lb",
            "lb.edge.svc:8080",
            "--drain-period",
            "20s",
            "--agent-resources",
            r#"{"requests":{"cpu":"5m","memory":"8Mi"},"limits":{"cpu":1}}"#,
            "--token-secret",
            "reg-token",
        ])
        .unwrap();
        assert!(!c.native_sidecar);
        assert_eq!(c.load_balancers, "lb.edge.svc:8080");
        assert_eq!(c.drain_period, Duration::from_secs(20));
        assert_eq!(c.resources.limits.unwrap()["cpu"].0, "1");
        assert_eq!(
            c.token,
            TokenSource::Secret {
                name: "reg-token".into()
            }
        );
        let c = config(&["--kubernetes-auth=true"]).unwrap();
        assert_eq!(
            c.token,
            TokenSource::ServiceAccount {
                audience: "roster".into(),
                expiration_seconds: 3600
            }
        );
        assert!(config(&[]).unwrap().native_sidecar, "native by default");
        let c = config(&[
            "--health-interval",
            "2s",
            "--agent-image-pull-secrets",
            "regcred, other",
        ])
        .unwrap();
        assert_eq!(c.health_interval, Some(Duration::from_secs(2)));
        assert_eq!(c.image_pull_secrets, ["regcred", "other"]);
        assert_eq!(config(&[]).unwrap().health_interval, None);
        assert_eq!(config(&[]).unwrap().run_as_user, Some(65532));
        assert!(!config(&[]).unwrap().log_json);
        assert!(config(&["--agent-log-format", "json"]).unwrap().log_json);
        assert!(Cli::try_parse_from(["x", "--agent-log-format", "xml"]).is_err());
        let c = config(&["--agent-run-as-user", "none"]).unwrap();
        assert_eq!(c.run_as_user, None, "OpenShift picks the uid");
        assert_eq!(
            config(&["--agent-run-as-user", "1000"])
                .unwrap()
                .run_as_user,
            Some(1000)
        );
        for bad in ["0", "-1", "root"] {
            assert!(
                Cli::try_parse_from(["x", "--agent-run-as-user", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_flags_are_named() {
        for (args, field) in [
            (
                &["--agent-resources", r#"{"limit":{"cpu":"1"}}"#][..],
                "--agent-resources",
            ),
            (
                &["--agent-resources", r#"{"limits":{"cpu":"lots"}}"#],
                "--agent-resources",
            ),
            (&["--agent-resources", "not json"], "--agent-resources"),
            (
                &["--kubernetes-auth=true", "--token-expiration", "1m"],
                "--token-expiration",
            ),
            (&["--drain-period", "0s"], "--drain-period"),
            (&["--health-interval", "0s"], "--health-interval"),
            (
                &["--agent-image-pull-secrets", "ok,not ok"],
                "--agent-image-pull-secrets",
            ),
        ] {
            let err = config(args).unwrap_err().to_string();
            assert!(err.contains(field), "{args:?}: {err}");
        }
    }

    #[test]
    fn quantities() {
        for ok in [
            "1", "0.5", ".5", "100m", "64Mi", "1Gi", "2k", "1e3", "1E-2", "+1",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "lots", "1.2.3", "64MB", "-1", "1e", "Mi", "."] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
