{{/*
The Service must be called `nexus-controller`: rendered EnvoyFilters fetch modules from
nexus-controller.<namespace>:8082 and call the rate-limit service at nexus-controller:8081.
Every namespaced object uses the same name; the Lease name is configurable.
*/}}
{{- define "nexus.fullname" -}}
nexus-controller
{{- end }}

{{- define "nexus.name" -}}
nexus
{{- end }}

{{- define "nexus.chart" -}}
{{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "nexus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nexus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{/* Standard labels on every object. */}}
{{- define "nexus.labels" -}}
helm.sh/chart: {{ include "nexus.chart" . }}
{{ include "nexus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nexus
{{- end }}

{{- define "nexus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "nexus.fullname" .) .Values.serviceAccount.name }}
{{- else -}}
{{ required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end -}}
{{- end }}

{{- define "nexus.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
What the controller may do to routes, Secrets and Istio objects (see rbac.yaml for why each
verb): a ClusterRole's rules, or with watchNamespaces each listed namespace's Role's.
*/}}
{{- define "nexus.routeRules" -}}
- apiGroups: ["nexus.datapunk.io"]
  resources: ["nexusroutes"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["nexus.datapunk.io"]
  resources: ["nexusroutes/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["networking.istio.io"]
  resources: ["envoyfilters", "virtualservices", "destinationrules"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
{{- end }}
