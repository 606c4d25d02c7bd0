{{/* Names and labels shared by the templates. */}}

{{- define "policyrag.fullname" -}}
{{- printf "%s-policyrag" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "policyrag.labels" -}}
app.kubernetes.io/name: policyrag
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: answer or vllm. */}}
{{- define "policyrag.selector" -}}
app.kubernetes.io/name: policyrag
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "policyrag.dataClaim" -}}
{{- if .Values.persistence.data.existingClaim -}}
{{- .Values.persistence.data.existingClaim -}}
{{- else -}}
{{- printf "%s-data" (include "policyrag.fullname" .) -}}
{{- end -}}
{{- end -}}
