{{/* The release's resource name (pods are <fullname>-<ordinal>: the process index). */}}
{{- define "ward.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ward.headless" -}}
{{- printf "%s-peers" (include "ward.fullname" .) -}}
{{- end -}}

{{- define "ward.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ward.labels" -}}
{{ include "ward.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Every process's address, in ordinal order: the same list on every pod. */}}
{{- define "ward.peers" -}}
{{- $name := include "ward.fullname" . -}}
{{- $svc := include "ward.headless" . -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.replicas) -}}
{{- $peers = append $peers (printf "%s-%d.%s.%s.svc.cluster.local:%d" $name $i $svc $.Release.Namespace (int $.Values.clusterPort)) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{- define "ward.claim" -}}
{{- default (printf "%s-shared" (include "ward.fullname" .)) .Values.checkpoints.existingClaim -}}
{{- end -}}
