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

{{/* The pods' service account: the one created, an existing one, or none (the default). */}}
{{- define "ward.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "ward.fullname" .) .Values.serviceAccount.name }}
{{- else -}}
{{ .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{/* The pipeline spec: values' own, or the chart's (a template: it depends on the storage layout). */}}
{{- define "ward.spec" -}}
{{- if .Values.pipeline.spec -}}
{{ .Values.pipeline.spec }}
{{- else -}}
{{ tpl (.Files.Get "files/pipeline.yaml") . }}
{{- end -}}
{{- end -}}
