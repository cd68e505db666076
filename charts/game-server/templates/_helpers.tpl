{{- define "game-server.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "game-server.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "game-server.labels" -}}
{{ include "game-server.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The pod spec shared by the Deployment and the GameServerSet. */}}
{{- define "game-server.podSpec" -}}
containers:
  - name: engine
    image: "{{ .Values.engine.image.repository }}:{{ .Values.engine.image.tag }}"
    imagePullPolicy: {{ .Values.engine.image.pullPolicy }}
    {{- with .Values.engine.args }}
    args: {{ toYaml . | nindent 6 }}
    {{- end }}
    ports:
      - name: game
        containerPort: {{ .Values.engine.port }}
        protocol: {{ .Values.engine.protocol }}
    env:
      - name: HOT_UPDATE_DIR
        value: {{ .Values.hotUpdate.mountPath | quote }}
      {{- range $k, $v := .Values.engine.env }}
      - name: {{ $k }}
        value: {{ $v | quote }}
      {{- end }}
    volumeMounts:
      - name: hot-update
        mountPath: {{ .Values.hotUpdate.mountPath }}
        readOnly: true
    resources: {{ toYaml .Values.engine.resources | nindent 6 }}
  {{- if .Values.hotUpdate.enabled }}
  - name: hot-update
    image: "{{ .Values.hotUpdate.image.repository }}:{{ .Values.hotUpdate.image.tag }}"
    imagePullPolicy: {{ .Values.hotUpdate.image.pullPolicy }}
    env:
      - name: HOT_UPDATE_DIR
        value: {{ .Values.hotUpdate.mountPath | quote }}
    volumeMounts:
      - name: hot-update
        mountPath: {{ .Values.hotUpdate.mountPath }}
    resources: {{ toYaml .Values.hotUpdate.resources | nindent 6 }}
  {{- end }}
volumes:
  - name: hot-update
    emptyDir:
      sizeLimit: {{ .Values.sharedVolume.sizeLimit }}
{{- with .Values.nodeSelector }}
nodeSelector: {{ toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{ toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
