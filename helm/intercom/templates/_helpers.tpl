{{- define "intercom.name" -}}{{ .Chart.Name }}{{- end -}}
{{- define "intercom.fullname" -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "intercom.labels" -}}
app.kubernetes.io/name: {{ include "intercom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "intercom.selector" -}}
app.kubernetes.io/name: {{ include "intercom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
