{{/* Common labels of everything the chart creates. */}}
{{- define "baton.labels" -}}
app.kubernetes.io/name: baton
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "baton.selectorLabels" -}}
app.kubernetes.io/name: baton
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Namespaces the operator watches when rbac.scope is namespace. */}}
{{- define "baton.watchNamespaces" -}}
{{- if .Values.rbac.watchNamespaces -}}
{{- join "," .Values.rbac.watchNamespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/*
Rules the operator needs, split into what kopf (the framework) needs and what baton (the
application) needs. Used by the ClusterRole (scope cluster) or each Role (scope namespace).
*/}}
{{- define "baton.namespacedRules" -}}
# --- framework (kopf) -------------------------------------------------------------------
# kopf posts Kubernetes Events about handler failures (baton also posts its own, below).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# kopf adds and removes its finalizer on InferencePools (its timers, used by the autoscaler,
# need one so they stop before the object goes).
- apiGroups: [baton.dev]
  resources: [inferencepools]
  verbs: [patch]
# --- application (baton) ----------------------------------------------------------------
# Watch InferencePools and write their status.
- apiGroups: [baton.dev]
  resources: [inferencepools]
  verbs: [get, list, watch]
- apiGroups: [baton.dev]
  resources: [inferencepools/status]
  verbs: [get, patch, update]
# Owner references with blockOwnerDeletion need update on the owner's finalizers.
- apiGroups: [baton.dev]
  resources: [inferencepools/finalizers]
  verbs: [update]
# Children: server-side apply (create + patch), watched for drift.
- apiGroups: [apps]
  resources: [statefulsets, deployments]
  verbs: [get, list, watch, create, patch]
# The autoscaler sets replicas of autoscaled roles.
- apiGroups: [apps]
  resources: [statefulsets/scale, deployments/scale]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [services, configmaps, serviceaccounts]
  verbs: [get, list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch]
# Each pool's NetworkPolicies (spec.networkPolicy). delete: a pool that opts out
# (enabled: false) has the operator remove the ones it created (owned by that pool, by uid).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
# spec.model.cache: each pool's claim <pool>-model-cache, a child like the others. delete: a
# pool that turns the cache off has the operator remove the claim it created (owned by that pool,
# by uid).
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, create, patch, delete]
{{- if .Values.rbac.tlsSecrets }}
# spec.tls: the Secret <pool>-tls with each pool's CA and certificate, read by name (to renew it)
# and written. No list or watch: the operator never enumerates Secrets, and one it does not own
# it leaves alone. rbac.tlsSecrets=false drops this rule (pools then bring their own Secret:
# spec.tls.secretName, which the operator does not read).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
{{- end }}
# The router's ServiceAccount may read its pool's EndpointSlices; to grant that in a Role the
# operator must hold the same rights itself (RBAC escalation prevention).
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
# Pods are read for status (readiness, the scheduler's reasons when unschedulable).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Events about what the operator does.
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# autoscaling.mode keda: ScaledObjects are children like the others.
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, watch, create, patch, delete]
{{- end -}}
