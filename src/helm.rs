//! The Helm chart's values, typed, so `charts/roster/values.schema.json`
//! is generated (`roster schema --helm`, `make schema`) from the same Rust
//! types as the config file: `config:` is [`Config`](crate::config::Config) itself. Kubernetes
//! objects passed through to the templates (resources, tolerations...) stay
//! open JSON objects; everything of roster's own is closed
//! (`additionalProperties: false`), so a typo fails `helm install`/`lint`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{Config, duration_schema};

/// A Kubernetes object passed through as is.
type Object = Map<String, Value>;

/// A Kubernetes resource quantity ("10m", "64Mi", "0.5", 1): a
/// non-negative decimal, then an optional binary (Ki..Ei), decimal (n, u, m,
/// k, M..E) or exponent suffix. The one grammar: the chart's schema carries
/// it, and the injector checks its flags with it ([`is_quantity`]).
pub const QUANTITY_PATTERN: &str =
    r"^[+]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$";

/// Whether `s` matches [`QUANTITY_PATTERN`].
pub fn is_quantity(s: &str) -> bool {
    static QUANTITY: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(QUANTITY_PATTERN).expect("a valid pattern"));
    QUANTITY.is_match(s)
}

/// A quantity, as YAML gives it: a string, or a plain number.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quantity(pub Value);

impl JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A Kubernetes quantity: \"100m\", \"64Mi\", 1.",
            "anyOf": [
                {"type": "string", "pattern": QUANTITY_PATTERN},
                {"type": "number", "minimum": 0}
            ]
        })
    }
}

/// Container resources: only `requests` and `limits`, with valid quantities.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    pub requests: std::collections::BTreeMap<String, Quantity>,
    pub limits: std::collections::BTreeMap<String, Quantity>,
}

/// `values.yaml`.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
#[schemars(title = "roster chart values")]
pub struct HelmValues {
    /// The roster image; the LB, the injector and the injected agents all run it.
    pub image: Image,
    /// Secrets (in the release namespace) for pulling the image: `[{name: regcred}]`.
    pub image_pull_secrets: Vec<SecretRef>,
    /// RUST_LOG of the LBs and the injector: a level, then `target=level` pairs.
    #[schemars(regex(
        pattern = r"^(error|warn|info|debug|trace|off)(,[A-Za-z0-9_:]+=(error|warn|info|debug|trace|off))*$"
    ))]
    pub log_level: String,
    /// Log lines as text, or JSON objects for log pipelines (LBs, injector, agents).
    pub log_format: LogFormat,
    /// Extra environment variables of the LB and injector containers.
    pub extra_env: Vec<EnvVar>,
    /// Pod securityContext of the LB and injector pods (merged over nothing:
    /// what is here is what is rendered; `runAsUser: null` for OpenShift).
    pub pod_security_context: Object,
    /// Container securityContext of the LB and injector containers.
    pub security_context: Object,
    pub name_override: String,
    pub fullname_override: String,
    /// Labels added to every object.
    pub common_labels: std::collections::BTreeMap<String, String>,
    /// The roster config file (`roster lb --config`), keys as in the file.
    pub config: Config,
    /// The load balancers.
    pub lb: Lb,
    /// The sidecar injector (mutating admission webhook).
    pub injector: Injector,
    /// How agents authenticate to the LBs.
    pub auth: Auth,
    /// Prometheus Operator ServiceMonitor for the LBs' /telemetry (explicit opt-in: needs the CRD).
    pub service_monitor: Monitor,
    /// Prometheus Operator PodMonitor for injected agents' /telemetry (explicit opt-in: needs the CRD).
    pub pod_monitor: Monitor,
    /// NetworkPolicy for the LB pods.
    pub network_policy: NetworkPolicy,
    /// ConfigMap with the Grafana dashboards of `dashboards/`, for the Grafana sidecar.
    pub grafana_dashboard: GrafanaDashboard,
    /// `helm test`: a pod that checks the LBs' /readyz and /backends.
    pub tests: Tests,
    /// Helm's global values (for parent charts).
    pub global: Object,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A Kubernetes object name (DNS subdomain).
const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$";

/// A reference to a Secret by name.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub name: String,
}

/// A container environment variable (`value` or `valueFrom`).
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVar {
    #[schemars(regex(pattern = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<Object>,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct Image {
    /// Registry host (and port), e.g. registry.example.com; empty: none
    /// (the image must then already be on the nodes, as with `kind load`).
    #[schemars(regex(pattern = r"^([a-zA-Z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*)?$"))]
    pub registry: String,
    #[schemars(regex(pattern = r"^[a-z0-9]+([._/-][a-z0-9]+)*$"))]
    pub repository: String,
    /// Default: the chart's appVersion.
    #[schemars(regex(pattern = r"^([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"))]
    pub tag: String,
    /// `sha256:…`; wins over the tag.
    #[schemars(regex(pattern = r"^(sha256:[a-f0-9]{64})?$"))]
    pub digest: String,
    pub pull_policy: PullPolicy,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    #[default]
    IfNotPresent,
    Always,
    Never,
}

/// How the LBs run.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub enum LbKind {
    /// `lb.replicas` pods behind the Services.
    #[default]
    Deployment,
    /// One LB per node (edge nodes: see `hostNetwork`, `hostPort`).
    DaemonSet,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct Lb {
    pub kind: LbKind,
    /// Pods of the Deployment.
    #[schemars(range(min = 0))]
    pub replicas: u32,
    /// DaemonSet only: run in the node's network namespace (needs a privileged namespace).
    pub host_network: bool,
    /// DaemonSet only: also expose the proxy on this port of every node (0 = off).
    pub host_port: u16,
    /// Sleep before SIGTERM so Service endpoints stop sending first
    /// (0: no preStop hook).
    #[schemars(range(min = 0, max = 300))]
    pub pre_stop_sleep_seconds: u32,
    /// The readiness probe on /readyz.
    pub readiness_probe: ProbeTuning,
    /// TLS on `lb.tls.listen` (8443) from a Secret.
    pub tls: LbTls,
    /// Extra arguments after `lb --config …`.
    pub extra_args: Vec<String>,
    /// Extra environment variables of the LB container.
    pub extra_env: Vec<EnvVar>,
    /// Extra volumes of the LB pods.
    pub extra_volumes: Vec<Object>,
    /// Extra volumeMounts of the LB container.
    pub extra_volume_mounts: Vec<Object>,
    pub resources: Resources,
    pub pod_annotations: std::collections::BTreeMap<String, String>,
    pub pod_labels: std::collections::BTreeMap<String, String>,
    pub node_selector: std::collections::BTreeMap<String, String>,
    pub tolerations: Vec<Object>,
    /// Empty: LB pods prefer different nodes.
    pub affinity: Object,
    pub topology_spread_constraints: Vec<Object>,
    pub priority_class_name: String,
    /// The traffic Service (`<release>-lb`).
    pub service: LbService,
    pub pdb: Pdb,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct ProbeTuning {
    #[schemars(range(min = 1, max = 60))]
    pub period_seconds: u32,
    /// Failures in a row before the pod leaves the Service (1 flaps under load).
    #[schemars(range(min = 1, max = 30))]
    pub failure_threshold: u32,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct LbTls {
    /// A `kubernetes.io/tls` Secret (tls.crt, tls.key; cert-manager's
    /// Certificate makes one); empty: no TLS listener. The chart mounts it
    /// and sets `config.lb.tls.listen` and `config.lb.tls.certs`.
    #[schemars(regex(pattern = r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)?$"))]
    pub secret_name: String,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct LbService {
    #[serde(rename = "type")]
    pub type_: ServiceType,
    #[schemars(range(min = 1))]
    pub port: u16,
    /// The https port, when `lb.tls.secretName` is set.
    #[schemars(range(min = 1))]
    pub https_port: u16,
    /// NodePort/LoadBalancer: a fixed node port (null = allocated).
    pub node_port: Option<u16>,
    pub annotations: std::collections::BTreeMap<String, String>,
    /// "" (the cluster's default), Cluster or Local (keeps client addresses).
    #[schemars(regex(pattern = r"^(|Cluster|Local)$"))]
    pub external_traffic_policy: String,
    pub load_balancer_source_ranges: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct Pdb {
    pub enabled: bool,
    #[schemars(range(min = 1))]
    pub max_unavailable: u32,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub enum FailurePolicy {
    /// Pods are created without the agent while the webhook is unreachable.
    #[default]
    Ignore,
    /// Pod creation fails while the webhook is unreachable.
    Fail,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct Injector {
    pub enabled: bool,
    #[schemars(range(min = 1))]
    pub replicas: u32,
    /// Inject a native sidecar (initContainer with restartPolicy Always, k8s ≥ 1.29);
    /// false: a classic container, for older clusters.
    pub native_sidecar: bool,
    pub failure_policy: FailurePolicy,
    #[schemars(range(min = 1, max = 30))]
    pub timeout_seconds: u32,
    /// Only call the webhook for pods carrying the annotation (CEL matchConditions, k8s ≥ 1.30).
    pub match_conditions: bool,
    /// Namespaces never injected, besides kube-system, kube-node-lease and the release's own.
    pub exclude_namespaces: Vec<String>,
    /// How long agents drain, and app containers keep serving, when a pod terminates.
    #[schemars(schema_with = "duration_schema")]
    pub drain_period: String,
    /// Give app containers without a preStop hook `preStop: sleep` (k8s ≥ 1.30).
    pub app_pre_stop_sleep: bool,
    /// Add prometheus.io/* scrape annotations for the agents' /telemetry.
    pub scrape_annotations: bool,
    /// The injected agent.
    pub agent: Agent,
    pub tls: InjectorTls,
    pub resources: Resources,
    pub pod_annotations: std::collections::BTreeMap<String, String>,
    pub node_selector: std::collections::BTreeMap<String, String>,
    pub tolerations: Vec<Object>,
    pub affinity: Object,
    pub priority_class_name: String,
    pub pdb: Pdb,
    /// Extra arguments after `inject`.
    pub extra_args: Vec<String>,
    /// Extra environment variables of the injector container.
    pub extra_env: Vec<EnvVar>,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct Agent {
    /// Resources of each injected `roster-agent`.
    pub resources: Resources,
    /// Secrets, in each app namespace, for pulling the agent image; added
    /// to injected pods.
    pub image_pull_secrets: Vec<SecretRef>,
    /// The agent's uid and gid; null: the platform's (OpenShift).
    #[schemars(range(min = 1))]
    pub run_as_user: Option<u32>,
    /// LB control addresses agents announce to (host:port); empty: the chart's `<release>-lb-control` Service.
    pub load_balancers: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct InjectorTls {
    /// Use cert-manager for the webhook certificate instead of the self-managed one.
    pub cert_manager: CertManager,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct CertManager {
    pub enabled: bool,
    /// An existing Issuer/ClusterIssuer (`name`, `kind`, `group`); empty: a self-signed Issuer.
    pub issuer_ref: Object,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Registration is open to the allowed networks.
    #[default]
    None,
    /// A shared bearer token from a Secret.
    Token,
    /// Projected ServiceAccount tokens, checked by the LBs with a TokenReview.
    Kubernetes,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct Auth {
    pub mode: AuthMode,
    pub token: TokenAuth,
    pub kubernetes: KubernetesAuth,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct TokenAuth {
    /// Secret name (key `token`) that agents mount from their own namespace, and the LBs from the release's.
    pub secret_name: String,
    /// Use this existing Secret in the release namespace instead of creating one.
    pub existing_secret: String,
    /// The token; empty: a random one, kept across upgrades.
    pub value: String,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct KubernetesAuth {
    /// Lifetime of the agents' projected tokens (the kubelet renews them).
    #[schemars(range(min = 600, max = 86400))]
    pub expiration_seconds: u32,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct Monitor {
    pub enabled: bool,
    /// Scrape interval (Prometheus duration).
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub interval: String,
    /// Extra labels (e.g. the `release` your Prometheus selects).
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct NetworkPolicy {
    pub enabled: bool,
    /// Peers allowed on the control port; empty: every pod of every namespace.
    pub control_from: Vec<Object>,
    /// Peers allowed on the proxy port; empty: anyone.
    pub proxy_from: Vec<Object>,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct Tests {
    /// Render the `helm test` pod.
    pub enabled: bool,
    /// An image with curl (the roster image has no shell nor curl).
    pub image: TestImage,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct TestImage {
    #[schemars(regex(pattern = r"^([a-zA-Z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*)?$"))]
    pub registry: String,
    #[schemars(regex(pattern = r"^[a-z0-9]+([._/-][a-z0-9]+)*$"))]
    pub repository: String,
    #[schemars(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"))]
    pub tag: String,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct GrafanaDashboard {
    pub enabled: bool,
    /// Namespace of the ConfigMap; empty: the release's.
    pub namespace: String,
    /// Labels the Grafana sidecar looks for.
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// `values.schema.json`, as written to the chart (pretty, newline-terminated).
pub fn values_schema() -> String {
    let mut schema = schemars::schema_for!(HelmValues).to_value();
    // values.yaml documents the defaults; the types' zero values would mislead.
    strip_defaults(&mut schema);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

fn strip_defaults(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("default");
            m.values_mut().for_each(strip_defaults);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_defaults),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn chart() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/charts/roster"))
    }

    #[test]
    fn committed_schema_is_fresh() {
        let path = chart().join("values.schema.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == values_schema(),
            "{} is stale: run `make schema`",
            path.display()
        );
    }

    #[test]
    fn default_values_fit_the_types() {
        let text = std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml");
        let values: HelmValues = serde_yaml::from_str(&text).expect("values.yaml fits HelmValues");
        values
            .config
            .validate_lb()
            .expect("chart's default config is valid");
    }

    #[test]
    fn schema_embeds_the_config_schema() {
        let schema: Value = serde_json::from_str(&values_schema()).unwrap();
        let text = schema.to_string();
        for key in [
            "unhealthy_threshold",
            "grace_period",
            "nativeSidecar",
            "DaemonSet",
        ] {
            assert!(text.contains(key), "{key}");
        }
        assert_eq!(schema["additionalProperties"], Value::Bool(false));
    }
}
