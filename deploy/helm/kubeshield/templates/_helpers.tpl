{{- define "kubeshield.fullname" -}}{{ printf "%s-kms" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "kubeshield.labels" -}}
app.kubernetes.io/name: kubeshield
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: kms-service
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "kubeshield.selector" -}}
app.kubernetes.io/name: kubeshield
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: kms-service
{{- end -}}
