{{- define "seal.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "seal.labels" -}}
app.kubernetes.io/name: kubeshield-seal
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "seal.selector" -}}
app.kubernetes.io/name: kubeshield-seal
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
