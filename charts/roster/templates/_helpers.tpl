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

{{/* Selector labels; call with (dict "ctx" $ "component" "lb"). */}}
{{- define "roster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "roster.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "roster.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
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
{{- toYaml $cfg -}}
{{- end -}}

{{/* Restricted Pod Security: pod level. */}}
{{- define "roster.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Restricted Pod Security: container level. */}}
{{- define "roster.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Values that cannot be expressed in values.schema.json. */}}
{{- define "roster.validate" -}}
{{- if and (ne .Values.lb.kind "DaemonSet") (or .Values.lb.hostNetwork .Values.lb.hostPort) -}}
{{- fail "lb.hostNetwork and lb.hostPort need lb.kind: DaemonSet" -}}
{{- end -}}
{{- if and .Values.lb.hostNetwork .Values.lb.hostPort (ne (int .Values.lb.hostPort) (int (include "roster.proxyPort" .))) -}}
{{- fail "with lb.hostNetwork the proxy already listens on the node at config.lb.listen's port: leave lb.hostPort 0 (or equal to it)" -}}
{{- end -}}
{{- if and (eq .Values.auth.mode "token") (not .Values.auth.token.secretName) -}}
{{- fail "auth.mode token needs auth.token.secretName" -}}
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
