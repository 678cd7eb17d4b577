{{/* Chart name, possibly overridden. */}}
{{- define "pydist.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; 63 characters at most (a DNS label). */}}
{{- define "pydist.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pydist.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object gets. */}}
{{- define "pydist.labels" -}}
helm.sh/chart: {{ include "pydist.chart" . }}
{{ include "pydist.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pydist
{{- end }}

{{/* Labels that select this release's pods (never change them: selectors are immutable). */}}
{{- define "pydist.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pydist.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pydist.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pydist.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pydist.cookieSecretName" -}}
{{- default (printf "%s-cookie" (include "pydist.fullname" .)) .Values.cookie.existingSecret }}
{{- end }}

{{- define "pydist.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) }}
{{- end }}

{{/* host:port the workers dial: the head's Service, or head.address. */}}
{{- define "pydist.joinAddress" -}}
{{- if .Values.head.enabled }}
{{- printf "%s-head.%s.svc:%d" (include "pydist.fullname" .) .Release.Namespace (int .Values.head.port) }}
{{- else }}
{{- $addr := required "head.address is required when head.enabled is false: the host or IP of the driver running addprocs(ElasticManager(...))" .Values.head.address }}
{{- if contains ":" $addr }}
{{- printf "[%s]:%d" $addr (int .Values.head.port) }}
{{- else }}
{{- printf "%s:%d" $addr (int .Values.head.port) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Environment shared by workers and head: env (a map) then extraEnv (EnvVar objects). */}}
{{- define "pydist.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: PYDIST_COOKIE_FILE
  value: /var/run/pydist/cookie
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ toString $value | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by workers and head. */}}
{{- define "pydist.podCommon" -}}
serviceAccountName: {{ include "pydist.serviceAccountName" . }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
volumes:
  - name: pydist-cookie
    secret:
      secretName: {{ include "pydist.cookieSecretName" . }}
      defaultMode: 0440
      items:
        - key: {{ .Values.cookie.key }}
          path: cookie
{{- with .Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Container mounts shared by workers and head: the cookie directory, read-only. */}}
{{- define "pydist.volumeMounts" -}}
- name: pydist-cookie
  mountPath: /var/run/pydist
  readOnly: true
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}
