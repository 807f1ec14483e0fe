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
{{- $image := printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- if .Values.image.digest }}
{{- $image = printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- end }}
{{- include "modelfleet.withRegistry" (dict "root" . "image" $image) }}
{{- end }}

{{/* The trainer/runtime image: repository:tag (tag defaults to the chart's appVersion). */}}
{{- define "modelfleet.workloadImage" -}}
{{- printf "%s:%s" .Values.workloadImages.repository (default .Chart.AppVersion .Values.workloadImages.tag) }}
{{- end }}

{{/* dict "root" $ "image" REF: REF with global.imageRegistry, when set, in place of its registry (the first path
component when it names a host: it contains "." or ":" or is "localhost", as container runtimes read it). */}}
{{- define "modelfleet.withRegistry" -}}
{{- $registry := (.root.Values.global | default dict).imageRegistry }}
{{- if $registry }}
{{- $parts := splitList "/" .image }}
{{- $first := first $parts }}
{{- $path := .image }}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq "localhost" $first)) }}
{{- $path = join "/" (rest $parts) }}
{{- end }}
{{- printf "%s/%s" (trimSuffix "/" $registry) $path }}
{{- else }}
{{- .image }}
{{- end }}
{{- end }}

{{/* imagePullSecrets of the operator pod: global.imagePullSecrets and imagePullSecrets, names or {name: ...}. */}}
{{- define "modelfleet.imagePullSecrets" -}}
{{- $secrets := list }}
{{- range concat ((.Values.global | default dict).imagePullSecrets | default list) .Values.imagePullSecrets }}
{{- $secrets = append $secrets (dict "name" (kindIs "string" . | ternary . (get (kindIs "map" . | ternary . dict) "name"))) }}
{{- end }}
{{- with uniq $secrets }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* Monitoring -------------------------------------------------------------------------------------- */}}

{{/* "true" when the Prometheus Operator's API is served (or claimed with helm template --api-versions), or
metrics.assumePrometheusOperator says to render its objects regardless. */}}
{{- define "modelfleet.prometheusOperator" -}}
{{- if or .Values.metrics.assumePrometheusOperator (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") }}true{{ end }}
{{- end }}

{{/* RBAC --------------------------------------------------------------------------------------------
Exactly what the operator uses, nothing more: tests/chart/test_rbac_audit.py runs the operator as this
ServiceAccount and compares these rules with the API server's audit log (docs/security.md says how to change
them). Server-side apply of an object that does not exist yet is authorized as "patch" and "create".
*/}}

{{/* Rules on namespaced resources: a ClusterRole's rules cluster-wide, a Role's per watched namespace. */}}
{{- define "modelfleet.namespacedRules" -}}
# The custom resources: watched and read (a ModelDeployment reads the TrainingJob it references); only their
# status is written; TrainingJobs past their TTL are deleted. The operator never changes a spec.
- apiGroups: [modelfleet.dev]
  resources: [trainingjobs, modeldeployments]
  verbs: [get, list, watch]
- apiGroups: [modelfleet.dev]
  resources: [trainingjobs]
  verbs: [delete]
- apiGroups: [modelfleet.dev]
  resources: [trainingjobs/status, modeldeployments/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement
# admission plugin (OpenShift enables it) allows only with update on the owner's finalizers.
- apiGroups: [modelfleet.dev]
  resources: [trainingjobs/finalizers, modeldeployments/finalizers]
  verbs: [update]
# Trainer pods (one per node rank, gang-restarted by deletion); runtime pods are only watched.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create, delete]
# The last log lines of a failed pod, for status and events.
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# Headless Services of training jobs (created), Services of model deployments (applied).
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch]
# Trainer config and progress ConfigMaps. get/patch/update are also what each job's progress Role grants:
# RBAC lets the operator create that Role only because it holds those permissions itself.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, update, patch]
# Per-job ServiceAccount, Role and RoleBinding that let rank 0 write its progress ConfigMap, and nothing else;
# get: an existing object of the same name is used only if the job owns it.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create]
# Kueue (docs/kueue.md): the Workload of each TrainingJob labelled kueue.x-k8s.io/queue-name, watched to notice
# admission and eviction; its status gets Finished, or the released quota after an eviction.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [get, list, watch, create]
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads/status]
  verbs: [patch]
# core/v1 Events on TrainingJobs and ModelDeployments.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# What a ModelDeployment renders: the runtime Deployment and its HPA (both watched), its PodDisruptionBudget,
# autoscaler and PodMonitor; the optional ones are deleted when no longer wanted (a PodMonitor only goes with its CRD).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors]
  verbs: [get, create, patch]
{{- end }}

{{/* Rules that only a ClusterRole can grant: cluster-scoped resources and reads across all namespaces. */}}
{{- define "modelfleet.clusterRules" -}}
# Room for a surge pod (whenNoRoom: Replace): node allocatable minus the requests of the pods bound to each
# node, which means listing nodes, and pods in every namespace.
- apiGroups: [""]
  resources: [nodes]
  verbs: [list]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Kueue: the node labels and tolerations of the ResourceFlavors assigned to an admitted Workload.
- apiGroups: [kueue.x-k8s.io]
  resources: [resourceflavors]
  verbs: [get]
# kopf notices CRDs (KEDA, Prometheus Operator, its own) appearing and disappearing; never writes them.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- if .Values.watchNamespaces }}
# With watchNamespaces, kopf follows the listed namespaces coming and going (cluster-wide it does not).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}
