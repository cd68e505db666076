{{- define "slipway.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "slipway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: slipway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "slipway.selector" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "slipway.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "slipway.tokenSecret" -}}
{{- .Values.apiToken.existingSecret | default (printf "%s-api-token" (include "slipway.fullname" .)) -}}
{{- end -}}

{{- define "slipway.helmApiName" -}}{{ include "slipway.fullname" . }}-helm-api{{- end -}}
{{- define "slipway.pollerName" -}}{{ include "slipway.fullname" . }}-poller{{- end -}}
{{- define "slipway.helmsmanName" -}}{{ include "slipway.fullname" . }}-helmsman{{- end -}}

{{- define "slipway.targetNamespaces" -}}
{{- $ns := .Values.helmsman.targetNamespaces | default (list .Release.Namespace) -}}
{{- toJson $ns -}}
{{- end -}}

{{- define "slipway.buildkitName" -}}{{ include "slipway.fullname" . }}-buildkitd{{- end -}}

{{/* build.engine buildkit over the chart's own builders, unless the config chose already. */}}
{{- define "slipway.buildkitBuild" -}}
{{- $name := include "slipway.buildkitName" . -}}
{{- $addrs := list -}}
{{- range $i := until (int .Values.buildkit.replicas) -}}
{{- $addrs = append $addrs (dict "address" (printf "tcp://%s-%d.%s.%s.svc:%v" $name $i $name $.Release.Namespace $.Values.buildkit.port) "ca_cert" "/etc/slipway-buildkit/ca.pem" "cert" "/etc/slipway-buildkit/cert.pem" "key" "/etc/slipway-buildkit/key.pem") -}}
{{- end -}}
{{- toJson (dict "engine" "buildkit" "buildkit" (dict "addresses" $addrs "buildctl" "/opt/buildkit/bin/buildctl")) -}}
{{- end -}}

{{/* The store URL from the PostgreSQL Secret (poller and workers), when one is set. */}}
{{- define "slipway.storeEnv" -}}
{{- if .Values.store.postgres.existingSecret }}
- name: SLIPWAY_STORE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.store.postgres.existingSecret }}
      key: {{ .Values.store.postgres.key }}
{{- end }}
{{- end -}}
