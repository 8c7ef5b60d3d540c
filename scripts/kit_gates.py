"""Feature-gated fields per Kubernetes version, for scripts/kit.py.

The strict schemas of kubernetes-validate list every field a version knows,
alpha ones included: a 1.29 render that uses the `sleep` lifecycle action
(alpha, off by default in 1.29) validates but the API server drops or
refuses it. So every render is also walked for the fields below, and a
field is an error on any version older than the one where its gate is on by
default (beta or GA).

Pure functions and tables only; kit.py does the rendering and reporting.
"""

from __future__ import annotations

import re
from typing import Iterator

# (path regex over dotted paths with [] for list items, feature gate,
#  first minor version where the gate is on by default, value predicate)
GATED: list[tuple[str, str, tuple[int, int], object]] = [
    (r"(^|\.)lifecycle\.(preStop|postStart)\.sleep$", "PodLifecycleSleepAction", (1, 30), None),
    (r"(^|\.)lifecycle\.(preStop|postStart)\.sleep\.seconds$", "PodLifecycleSleepActionAllowZero", (1, 33),
     lambda v: v == 0),
    (r"(^|\.)lifecycle\.stopSignal$", "ContainerStopSignals", (1, 99), None),
    (r"(^|\.)initContainers\[\]\.restartPolicy$", "SidecarContainers", (1, 29), None),
    (r"(^|\.)webhooks\[\]\.matchConditions$", "AdmissionWebhookMatchConditions", (1, 28), None),
    (r"^spec\.trafficDistribution$", "ServiceTrafficDistribution", (1, 31), None),
    (r"(^|\.)(template\.)?spec\.resources$", "PodLevelResources", (1, 34), None),
    (r"(^|\.)containers\[\]\.resizePolicy$", "InPlacePodVerticalScaling", (1, 33), None),
    (r"(^|\.)spec\.hostUsers$", "UserNamespacesSupport", (1, 33), None),
    (r"(^|\.)containers\[\]\.restartPolicyRules$", "ContainerRestartRules", (1, 99), None),
]


def walk(obj, path: str = "") -> Iterator[tuple[str, object]]:
    """Every (dotted path, value) in obj; list items are written `[]`."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else str(k)
            yield p, v
            yield from walk(v, p)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk(v, f"{path}[]")


def minor(version: str) -> tuple[int, int]:
    m = re.match(r"v?(\d+)\.(\d+)", version)
    if not m:
        raise ValueError(f"not a Kubernetes version: {version}")
    return int(m.group(1)), int(m.group(2))


def gated_fields(obj: dict, version: str) -> list[str]:
    """Fields of obj whose feature gate is off by default in `version`."""
    v = minor(version)
    found = []
    # Only spec-like paths: a field named like a gated one inside a
    # ConfigMap's data, a label or an annotation is just text.
    for path, value in walk({k: obj[k] for k in obj if k not in ("metadata", "data")}):
        for pattern, gate, since, pred in GATED:
            if v < since and re.search(pattern, path) and (pred is None or pred(value)):
                found.append(f"{path} ({gate}: on by default from {since[0]}.{since[1]})")
    return found


# Value sets rendered for every new value (issue 16, services, protocols).
NEW_VALUE_SETS: dict[str, dict] = {
    "open-auth": {"auth": {"mode": "none"}, "networkPolicy": {"enabled": False}},
    "existing-token": {"auth": {"mode": "token", "token": {"existingSecret": "my-roster-token"}}},
    "escape-hatches": {
        "image": {"registry": "registry.example.com/platform", "repository": "roster",
                  "digest": "sha256:" + "ab" * 32},
        "imagePullSecrets": [{"name": "regcred"}],
        "logLevel": "info,roster::registry=debug",
        "logFormat": "json",
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "commonLabels": {"team": "platform"},
        # OpenShift's restricted SCC picks the uid: the chart must not.
        "podSecurityContext": {"runAsNonRoot": True, "runAsUser": None, "runAsGroup": None,
                               "fsGroup": None},
        "lb": {"extraArgs": ["--threads", "2"],
               "extraEnv": [{"name": "MALLOC_ARENA_MAX", "value": "2"}],
               "extraVolumes": [{"name": "extra", "emptyDir": {}}],
               "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}],
               "priorityClassName": "system-cluster-critical",
               "readinessProbe": {"periodSeconds": 5, "failureThreshold": 4}},
        "injector": {"extraArgs": ["--reconcile-interval", "2m"],
                     "extraEnv": [{"name": "ROSTER_SCRAPE_ANNOTATIONS", "value": "false"}],
                     "nodeSelector": {"kubernetes.io/os": "linux"},
                     "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
                     "priorityClassName": "system-cluster-critical",
                     "agent": {"imagePullSecrets": [{"name": "regcred"}], "runAsUser": None}},
        "tests": {"image": {"registry": "registry.example.com", "repository": "curl", "tag": "8"}},
    },
    "services-tls-h2c": {
        "config": {
            "health_check": {"interval": "2s"},
            "discovery": {"announce_interval": "10s"},
            "routes": [{"host": "shop.example.com", "path_prefix": "/", "service": "shop"},
                       {"path_prefix": "/api", "service": "api"}],
            "services": {"shop": {"algorithm": "least_loaded", "retries": 2,
                                  "health_check": {"path": "/healthz", "interval": "3s", "timeout": "1s"}},
                         "api": {"protocol": "h2c", "hash_header": "x-user", "panic_threshold": 50}},
            "lb": {"h2c": True},
        },
        "lb": {"tls": {"secretName": "roster-lb-tls"}},
    },
    "low-port": {"config": {"lb": {"listen": "0.0.0.0:80"}}},
    "hostnetwork-low-port": {"lb": {"kind": "DaemonSet", "hostNetwork": True},
                             "config": {"lb": {"listen": "0.0.0.0:80"}}},
}

# Every new value has a bad value that must be refused (schema or template).
NEW_BAD_VALUES: dict[str, dict] = {
    "image.digest latest": {"image": {"digest": "latest"}},
    "image.registry with a scheme": {"image": {"registry": "https://registry.example.com"}},
    "image.tag with a space": {"image": {"tag": "1 2"}},
    "imagePullSecrets as strings": {"imagePullSecrets": ["regcred"]},
    "imagePullSecrets item without name": {"imagePullSecrets": [{"nam": "regcred"}]},
    "logLevel verbose": {"logLevel": "verbose"},
    "logFormat xml": {"logFormat": "xml"},
    "extraEnv item without name": {"extraEnv": [{"value": "x"}]},
    "podSecurityContext a string": {"podSecurityContext": "restricted"},
    "securityContext a list": {"securityContext": []},
    "lb.extraArgs a string": {"lb": {"extraArgs": "--threads 2"}},
    "lb.extraEnv bad name": {"lb": {"extraEnv": [{"name": "1BAD", "value": "x"}]}},
    "lb.extraVolumes an object": {"lb": {"extraVolumes": {}}},
    "lb.extraVolumeMounts a string": {"lb": {"extraVolumeMounts": "x"}},
    "lb.readinessProbe.failureThreshold 0": {"lb": {"readinessProbe": {"failureThreshold": 0}}},
    "lb.readinessProbe.failureTreshold (typo)": {"lb": {"readinessProbe": {"failureTreshold": 3}}},
    "lb.tls.secretName Bad_Name": {"lb": {"tls": {"secretName": "Bad_Name"}}},
    "lb.tls.secretName and config.lb.tls.certs": {
        "lb": {"tls": {"secretName": "t"}},
        "config": {"lb": {"tls": {"certs": [{"cert_file": "/a", "key_file": "/b"}]}}}},
    "lb.service.httpsPort 0": {"lb": {"service": {"httpsPort": 0}}},
    "injector.extraArgs numbers": {"injector": {"extraArgs": [1]}},
    "injector.extraEnv a map": {"injector": {"extraEnv": {"A": "b"}}},
    "injector.agent.imagePullSecrets bad name": {"injector": {"agent": {"imagePullSecrets": [{"name": "Bad Name"}]}}},
    "injector.agent.runAsUser 0": {"injector": {"agent": {"runAsUser": 0}}},
    "tests.enabled 'yes'": {"tests": {"enabled": "yes"}},
    "tests.image.tag empty": {"tests": {"image": {"tag": ""}}},
    "serviceMonitor.enabled 'true'": {"serviceMonitor": {"enabled": "true"}},
    "auth.mode token without a token": {"auth": {"mode": "token"}},
    "config.routes item without service": {"config": {"routes": [{"host": "x"}]}},
    "config.routes path_prefix without /": {"config": {"routes": [{"service": "a", "path_prefix": "api"}]}},
    "config.services algorithm random": {"config": {"services": {"shop": {"algorithm": "random"}}}},
    "config.services.shop.retry (typo)": {"config": {"services": {"shop": {"retry": 1}}}},
    "config.services name with a space": {"config": {"services": {"bad name": {}}}},
    "config.services protocol spdy": {"config": {"services": {"shop": {"protocol": "spdy"}}}},
    "config.services health_check.interval soon": {
        "config": {"services": {"shop": {"health_check": {"interval": "soon"}}}}},
    "config.lb.tls.listen without host": {"config": {"lb": {"tls": {"listen": "8443"}}}},
    "config.lb.tls.certs without key_file": {"config": {"lb": {"tls": {"certs": [{"cert_file": "/a"}]}}}},
    "config.lb.h2c 'yes'": {"config": {"lb": {"h2c": "yes"}}},
}

# Keys of `config:` that the chart accepts before this roster build does
# (the config types for them are being written in parallel): a rendered
# roster.yaml holding one is not fed to `roster lb --print-config`.
PENDING_CONFIG_KEYS = ("routes", "services", "tls", "h2c")
