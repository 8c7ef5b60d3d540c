//! `roster inject`: the mutating admission webhook that adds the
//! `roster-agent` sidecar to pods annotated `roster.dev/inject: "true"`.
//!
//! - [`patch`]: the pure decision, Pod + [`InjectConfig`] → JSON patch.
//! - [`server`]: HTTPS, `POST /mutate`, `GET /healthz`; parse, answer, wrap.
//! - [`certs`]: CA and serving certificates (rcgen), the swappable rustls key.
//! - [`bootstrap`]: TLS without cert-manager: a Secret and the caBundle.
//!
//! TLS comes either from `--tls-cert`/`--tls-key` (reloaded when the files
//! change; cert-manager's Secret, for instance) or, without them, from the
//! self-managed Secret that the webhook creates and renews itself.

pub mod bootstrap;
pub mod certs;
pub mod patch;
pub mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args};
use k8s_openapi::api::core::v1::ResourceRequirements;
use tokio_rustls::TlsAcceptor;

pub use patch::{InjectConfig, Injection, TokenSource, inject};

use crate::Error;
use crate::config::{ConfigError, parse_duration};

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
        env = "ROSTER_DISCOVERY_LB",
        default_value = "roster-lb-control.roster.svc:8080"
    )]
    pub discovery_lb: String,
    /// The agents' vitals port.
    #[arg(long, env = "ROSTER_METRICS_PORT", default_value_t = 9090)]
    pub metrics_port: u16,
    /// The agents' heartbeat period (default: the agent's).
    #[arg(long, env = "ROSTER_ANNOUNCE_INTERVAL", value_parser = parse_duration)]
    pub announce_interval: Option<Duration>,
    /// How long agents drain, and apps keep serving, once a pod terminates.
    #[arg(long, env = "ROSTER_DRAIN_PERIOD", default_value = "15s", value_parser = parse_duration)]
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
}

impl InjectArgs {
    /// The injection settings these flags describe.
    pub fn inject_config(&self) -> Result<InjectConfig, ConfigError> {
        let resources = match &self.agent_resources {
            None => patch::default_resources(),
            Some(json) => serde_json::from_str::<ResourceRequirements>(json).map_err(|e| {
                ConfigError::Invalid {
                    field: "--agent-resources",
                    message: e.to_string(),
                }
            })?,
        };
        let token = match (&self.token_secret, self.kubernetes_auth) {
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
        };
        if self.drain_period.is_zero() {
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
            metrics_port: self.metrics_port,
            announce_interval: self.announce_interval,
            drain_period: self.drain_period,
            app_pre_stop_sleep: self.app_pre_stop_sleep,
            token,
            resources,
            scrape_annotations: self.scrape_annotations,
        })
    }
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
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: args.listen,
            source,
        })?;
    let served = match (&args.tls_cert, &args.tls_key) {
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
    };
    let acceptor = TlsAcceptor::from(Arc::new(certs::server_config(served)?));
    tracing::info!(
        listen = %args.listen,
        image = %cfg.image,
        native_sidecar = cfg.native_sidecar,
        lb = %cfg.load_balancers,
        "roster inject serving"
    );
    server::serve_tls(
        listener,
        acceptor,
        server::router(cfg),
        shutdown_signal(),
        SHUTDOWN_GRACE,
    )
    .await;
    tracing::info!("roster inject stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}
