{{/* Names ---------------------------------------------------------------------------------------- */}}

{{- define "modelfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name of the operator's objects; the release name alone when it already names the chart. */}}
{{- define "modelfleet.fullname" -}}
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

{{- define "modelfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels ------------------------------------------------------------------------------------------ */}}

{{- define "modelfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "modelfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "modelfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelfleet
{{- end }}

{{/* Images ------------------------------------------------------------------------------------------ */}}

{{/* repository@digest when a digest is set, else repository:tag (tag defaults to the chart's appVersion). */}}
{{- define "modelfleet.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The trainer/runtime image: repository:tag (tag defaults to the chart's appVersion). */}}
{{- define "modelfleet.workloadImage" -}}
{{- printf "%s:%s" .Values.workloadImages.repository (default .Chart.AppVersion .Values.workloadImages.tag) }}
{{- end }}

{{/* Monitoring -------------------------------------------------------------------------------------- */}}

{{/* "true" when the Prometheus Operator's API is served (or claimed with helm template --api-versions). */}}
{{- define "modelfleet.prometheusOperator" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{/* RBAC --------------------------------------------------------------------------------------------
Exactly what the operator's code calls, nothing more (docs/helm.md explains each rule). Server-side apply
of an object that does not exist yet is authorized as "patch" and "create", hence both on applied kinds.
*/}}

{{/* Rules on namespaced resources: a ClusterRole's rules cluster-wide, a Role's per watched namespace. */}}
{{- define "modelfleet.namespacedRules" -}}
# The custom resources: kopf watches them and patches its finalizer and progress annotations; TrainingJobs
# past their TTL are deleted; ModelDeployments read the TrainingJob they reference.
- apiGroups: [modelfleet.dev]
  resources: [trainingjobs, modeldeployments]
  verbs: [get, list, watch, patch]
- apiGroups: [modelfleet.dev]
  resources: [trainingjobs]
  verbs: [delete]
- apiGroups: [modelfleet.dev]
  resources: [trainingjobs/status, modeldeployments/status]
  verbs: [get, patch]
# Children carry ownerReferences with blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement
# admission plugin (OpenShift enables it) allows only with update on the owner's finalizers.
- apiGroups: [modelfleet.dev]
  resources: [trainingjobs/finalizers, modeldeployments/finalizers]
  verbs: [update]
# Trainer pods (one per node rank, gang-restarted by deletion); runtime pods are only observed.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
# The last log lines of a failed pod, for status and events.
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# Headless Services of training jobs, Services of model deployments.
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
# Trainer config and progress ConfigMaps. get/patch/update are also what each job's progress Role grants:
# RBAC lets the operator create that Role only because it holds those permissions itself.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, update, patch, delete]
# Per-job ServiceAccount, Role and RoleBinding that let rank 0 write its progress ConfigMap, and nothing else.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, delete]
# Events on TrainingJobs and ModelDeployments (kopf posts core/v1 Events; newer clients use events.k8s.io).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# What a ModelDeployment renders: the runtime Deployment, its PodDisruptionBudget, autoscaler and PodMonitor.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors]
  verbs: [get, list, watch, create, patch, delete]
{{- end }}

{{/* Rules that only a ClusterRole can grant: cluster-scoped resources and reads across all namespaces. */}}
{{- define "modelfleet.clusterRules" -}}
# Room for a surge pod (whenNoRoom: Replace): node allocatable minus the requests of the pods bound to each
# node, which means listing nodes, and pods in every namespace.
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# kopf notices CRDs (KEDA, Prometheus Operator, its own) appearing and disappearing; never writes them.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- if not .Values.watchNamespaces }}
# Cluster-wide mode: kopf follows namespaces coming and going.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}
