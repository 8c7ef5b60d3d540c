{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "roster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Base name of every object: release "roster" gives roster-lb, roster-lb-control... */}}
{{- define "roster.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "roster.lb" -}}{{ include "roster.fullname" . | trunc 55 | trimSuffix "-" }}-lb{{- end -}}
{{- define "roster.lbControl" -}}{{ include "roster.fullname" . | trunc 47 | trimSuffix "-" }}-lb-control{{- end -}}
{{- define "roster.injector" -}}{{ include "roster.fullname" . | trunc 49 | trimSuffix "-" }}-injector{{- end -}}
{{- define "roster.config" -}}{{ include "roster.fullname" . | trunc 56 | trimSuffix "-" }}-config{{- end -}}

{{- define "roster.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "roster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod template labels: the selector's plus commonLabels; call like roster.selectorLabels. */}}
{{- define "roster.podLabels" -}}
{{ include "roster.selectorLabels" . }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels; call with (dict "ctx" $ "component" "lb"). */}}
{{- define "roster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "roster.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* registry/repository@digest, else registry/repository:tag (tag default: appVersion). */}}
{{- define "roster.image" -}}
{{- $repo := .Values.image.repository -}}
{{- with .Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The helm test image. */}}
{{- define "roster.testImage" -}}
{{- $i := .Values.tests.image -}}
{{- printf "%s%s:%s" (ternary "" (printf "%s/" (trimSuffix "/" $i.registry)) (empty $i.registry)) $i.repository $i.tag -}}
{{- end -}}

{{/* Environment shared by the LB and the injector: RUST_LOG, then extraEnv. */}}
{{- define "roster.commonEnv" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- if eq .Values.logFormat "json" }}
- name: ROSTER_LOG_FORMAT
  value: json
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Where the LB mounts lb.tls.secretName. */}}
{{- define "roster.tlsDir" -}}/etc/roster/tls{{- end -}}
{{- define "roster.httpsPort" -}}
{{- include "roster.port" (dig "lb" "tls" "listen" "0.0.0.0:8443" .Values.config) -}}
{{- end -}}

{{/* The lowest port the LB binds: below 1024 it needs more than the restricted defaults. */}}
{{- define "roster.lowestPort" -}}
{{- $ports := list (int (include "roster.proxyPort" .)) (int (include "roster.controlPort" .)) -}}
{{- if .Values.lb.tls.secretName }}{{ $ports = append $ports (int (include "roster.httpsPort" .)) }}{{ end -}}
{{- $min := 65535 -}}
{{- range $ports }}{{ if lt . $min }}{{ $min = . }}{{ end }}{{ end -}}
{{- $min -}}
{{- end -}}

{{/* The port of a "host:port" listen address. */}}
{{- define "roster.port" -}}
{{- regexFind "[0-9]+$" . -}}
{{- end -}}

{{- define "roster.proxyPort" -}}
{{- include "roster.port" (dig "lb" "listen" "0.0.0.0:8000" .Values.config) -}}
{{- end -}}

{{- define "roster.controlPort" -}}
{{- include "roster.port" (dig "lb" "control_listen" "0.0.0.0:8080" .Values.config) -}}
{{- end -}}

{{- define "roster.metricsPort" -}}
{{- dig "discovery" "metrics_port" 9090 .Values.config | int -}}
{{- end -}}

{{/* Whole seconds (rounded up) of a humantime duration such as "30s" or "1m 30s". */}}
{{- define "roster.seconds" -}}
{{- $units := dict "ns" 0.000000001 "nanos" 0.000000001 "nsec" 0.000000001 "us" 0.000001 "usec" 0.000001 "µs" 0.000001 "ms" 0.001 "millis" 0.001 "msec" 0.001 "s" 1 "sec" 1 "secs" 1 "second" 1 "seconds" 1 "m" 60 "min" 60 "mins" 60 "minute" 60 "minutes" 60 "h" 3600 "hr" 3600 "hrs" 3600 "hour" 3600 "hours" 3600 "d" 86400 "day" 86400 "days" 86400 "w" 604800 "wk" 604800 "wks" 604800 "week" 604800 "weeks" 604800 "M" 2630016 "month" 2630016 "months" 2630016 "y" 31557600 "yr" 31557600 "yrs" 31557600 "year" 31557600 "years" 31557600 -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9]+\\s*[^0-9\\s]+" (toString .) -1 -}}
{{- $n := regexFind "^[0-9]+" . | float64 -}}
{{- $unit := regexReplaceAll "^[0-9]+\\s*" . "" -}}
{{- if not (hasKey $units $unit) -}}
{{- fail (printf "cannot read the duration %q" .) -}}
{{- end -}}
{{- $total = addf $total (mulf $n (get $units $unit)) -}}
{{- end -}}
{{- ceil $total | int -}}
{{- end -}}

{{/* The LB control addresses injected agents announce to. */}}
{{- define "roster.agentLoadBalancers" -}}
{{- if .Values.injector.agent.loadBalancers -}}
{{- join "," .Values.injector.agent.loadBalancers -}}
{{- else -}}
{{- printf "%s.%s.svc:%s" (include "roster.lbControl" .) .Release.Namespace (include "roster.controlPort" .) -}}
{{- end -}}
{{- end -}}

{{/* The token Secret the LBs mount. */}}
{{- define "roster.tokenSecret" -}}
{{- default .Values.auth.token.secretName .Values.auth.token.existingSecret -}}
{{- end -}}

{{/* The roster config file: .Values.config plus what `auth` implies. */}}
{{- define "roster.configFile" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $reg := deepCopy (default dict (get $cfg "registration")) -}}
{{- if eq .Values.auth.mode "token" -}}
{{- $_ := set $reg "token_file" "/var/run/secrets/roster/token" -}}
{{- else if eq .Values.auth.mode "kubernetes" -}}
{{- $_ := set $reg "kubernetes_auth" true -}}
{{- end -}}
{{- if $reg -}}
{{- $_ := set $cfg "registration" $reg -}}
{{- end -}}
{{- if .Values.lb.tls.secretName -}}
{{- $lb := deepCopy (default dict (get $cfg "lb")) -}}
{{- $tls := deepCopy (default dict (get $lb "tls")) -}}
{{- $dir := include "roster.tlsDir" . -}}
{{- $_ := set $tls "listen" (default "0.0.0.0:8443" (get $tls "listen")) -}}
{{- $_ := set $tls "certs" (list (dict "cert_file" (printf "%s/tls.crt" $dir) "key_file" (printf "%s/tls.key" $dir))) -}}
{{- $_ := set $lb "tls" $tls -}}
{{- $_ := set $cfg "lb" $lb -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Pod securityContext (values: podSecurityContext; restricted by default). */}}
{{- define "roster.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}

{{/* Container securityContext (values: securityContext; restricted by default). */}}
{{- define "roster.securityContext" -}}
{{- toYaml .Values.securityContext -}}
{{- end -}}

{{/* The LB pod's securityContext. Ports below 1024: in its own network
     namespace the pod lowers net.ipv4.ip_unprivileged_port_start (a safe
     sysctl, allowed by the restricted level); with hostNetwork that sysctl
     is the node's, so the container runs as uid 0 holding only
     NET_BIND_SERVICE (Kubernetes cannot grant a capability to a non-root
     process: no ambient capabilities). hostNetwork needs the privileged
     level anyway. */}}
{{- define "roster.lbPodSecurityContext" -}}
{{- $psc := deepCopy .Values.podSecurityContext -}}
{{- $low := int (include "roster.lowestPort" .) -}}
{{- if lt $low 1024 -}}
{{- if .Values.lb.hostNetwork -}}
{{- $_ := set $psc "runAsNonRoot" false -}}
{{- $_ := set $psc "runAsUser" 0 -}}
{{- else -}}
{{- $sysctls := default list (get $psc "sysctls") -}}
{{- $sysctls = append $sysctls (dict "name" "net.ipv4.ip_unprivileged_port_start" "value" (toString $low)) -}}
{{- $_ := set $psc "sysctls" $sysctls -}}
{{- end -}}
{{- end -}}
{{- toYaml $psc -}}
{{- end -}}

{{- define "roster.lbSecurityContext" -}}
{{- $sc := deepCopy .Values.securityContext -}}
{{- if and .Values.lb.hostNetwork (lt (int (include "roster.lowestPort" .)) 1024) -}}
{{- $_ := set $sc "runAsNonRoot" false -}}
{{- $_ := set $sc "runAsUser" 0 -}}
{{- $_ := set $sc "capabilities" (dict "drop" (list "ALL") "add" (list "NET_BIND_SERVICE")) -}}
{{- end -}}
{{- toYaml $sc -}}
{{- end -}}

{{/* Values that cannot be expressed in values.schema.json. */}}
{{- define "roster.validate" -}}
{{- if and (ne .Values.lb.kind "DaemonSet") (or .Values.lb.hostNetwork .Values.lb.hostPort) -}}
{{- fail "lb.hostNetwork and lb.hostPort need lb.kind: DaemonSet" -}}
{{- end -}}
{{- if and .Values.lb.hostNetwork .Values.lb.hostPort (ne (int .Values.lb.hostPort) (int (include "roster.proxyPort" .))) -}}
{{- fail "with lb.hostNetwork the proxy already listens on the node at config.lb.listen's port: leave lb.hostPort 0 (or equal to it)" -}}
{{- end -}}
{{- if and (eq .Values.auth.mode "token") (not .Values.auth.token.secretName) (not .Values.auth.token.existingSecret) -}}
{{- fail "auth.mode token needs auth.token.secretName" -}}
{{- end -}}
{{- if and (eq .Values.auth.mode "token") (not .Values.auth.token.existingSecret) (not .Values.auth.token.value) -}}
{{- fail "auth.mode token: set auth.token.existingSecret (a Secret you manage, GitOps-safe) or auth.token.value; a generated token would change on every `helm template`" -}}
{{- end -}}
{{- if and .Values.lb.tls.secretName (dig "lb" "tls" "certs" nil .Values.config) -}}
{{- fail "set lb.tls.secretName or config.lb.tls.certs, not both" -}}
{{- end -}}
{{- if and .Values.lb.tls.secretName (eq (include "roster.httpsPort" .) (include "roster.proxyPort" .)) -}}
{{- fail "config.lb.tls.listen and config.lb.listen use the same port" -}}
{{- end -}}
{{- if and .Values.auth.token.existingSecret .Values.auth.token.value -}}
{{- fail "set auth.token.existingSecret or auth.token.value, not both" -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped names carry the namespace: two releases must not collide. */}}
{{- define "roster.webhookConfig" -}}
{{- printf "%s-%s" (include "roster.injector" .) .Release.Namespace | trimSuffix "-" -}}
{{- end -}}
{{- define "roster.injectorClusterRole" -}}
{{- printf "%s-%s" (include "roster.injector" .) .Release.Namespace | trimSuffix "-" -}}
{{- end -}}
{{- define "roster.lbClusterRole" -}}
{{- printf "%s-%s" (include "roster.lb" .) .Release.Namespace | trimSuffix "-" -}}
{{- end -}}
