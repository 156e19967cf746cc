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
{{/* https://<address>:<port> of every replica, comma-separated: the relay's --upstream */}}
{{- define "kubeshield.upstreams" -}}
{{- $port := .Values.port -}}
{{- $out := list -}}
{{- range .Values.replicas -}}{{- $out = append $out (printf "https://%s:%v" .address $port) -}}{{- end -}}
{{- join "," $out -}}
{{- end -}}
{{/* the sync etcd: keys.etcd.endpoints, else https://<replica address>:2379 for every replica */}}
{{- define "kubeshield.etcdEndpoints" -}}
{{- if .Values.keys.etcd.endpoints -}}{{ .Values.keys.etcd.endpoints }}{{- else -}}
{{- $out := list -}}
{{- range .Values.replicas -}}{{- $out = append $out (printf "https://%s:2379" .address) -}}{{- end -}}
{{- join "," $out -}}
{{- end -}}
{{- end -}}
{{- define "kubeshield.checkValues" -}}
{{- if not .Values.replicas -}}{{ fail "replicas: list at least one replica (3 or more in production)" }}{{- end -}}
{{- range .Values.replicas -}}
{{- if or (not .node) (not .address) -}}{{ fail "replicas: every entry needs node and address" }}{{- end -}}
{{- end -}}
{{- if and .Values.allowAnyClientCert .Values.allow -}}{{ fail "allow and allowAnyClientCert contradict each other: give one" }}{{- end -}}
{{- if and (not .Values.allowAnyClientCert) (not .Values.allow) -}}{{ fail "allow: list the relays' identities (e.g. dns:relay.kubeshield.internal), or set allowAnyClientCert: true" }}{{- end -}}
{{- if not (has .Values.credentials.source (list "secret" "hostPath")) -}}{{ fail "credentials.source must be secret or hostPath" }}{{- end -}}
{{- end -}}
