{{/* The release's full name, at most 63 characters. */}}
{{- define "qleet-agent.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "qleet-agent.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "qleet-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "qleet-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "qleet-agent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "qleet-agent.tokenSecret" -}}
{{- default (printf "%s-registration" (include "qleet-agent.fullname" .)) .Values.existingTokenSecret -}}
{{- end -}}

{{- define "qleet-agent.stateSecret" -}}
{{- printf "%s-state" (include "qleet-agent.fullname" .) -}}
{{- end -}}

{{/*
What the agent may do to the objects it applies: everything needed for server-side apply
(get, create, patch), rollout and drift checks (list, watch), updates and pruning (update,
delete). No `escalate`, `bind` or `impersonate`, and no RBAC objects at all, so a workload it
applies can never hold more rights than the agent itself.
*/}}
{{- define "qleet-agent.applyVerbs" -}}
["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end -}}

{{/* The namespaced rules, shared by the ClusterRole and the per-namespace Roles. */}}
{{- define "qleet-agent.workloadRules" -}}
# Workloads: a Workload object renders to a Deployment (stateless) or a StatefulSet (with
# volumes); the agent reads their status to report the rollout (available replicas).
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: {{ include "qleet-agent.applyVerbs" . }}
# Reading ReplicaSets and Pods only: to explain a stuck rollout (which pod fails and why).
- apiGroups: ["apps"]
  resources: ["replicasets"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Services expose workloads inside the cluster; ConfigMaps carry their non-secret settings.
# Secrets: a workload's secret references (e.g. the database password the agent keeps in AWS
# Secrets Manager) are materialised into a Kubernetes Secret by the agent itself, so the secret
# value never travels through Qleet. ServiceAccounts: each workload runs as its own account
# (e.g. with its IRSA role), never as the agent's.
- apiGroups: [""]
  resources: ["services", "configmaps", "secrets", "serviceaccounts"]
  verbs: {{ include "qleet-agent.applyVerbs" . }}
# Gateway objects render to Ingresses.
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: {{ include "qleet-agent.applyVerbs" . }}
# One-off tasks of a workload (e.g. database migrations before a rollout).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: {{ include "qleet-agent.applyVerbs" . }}
# DomainName objects: TLS certificates through cert-manager, DNS records through external-dns
# (its DNSEndpoint resource). Only these resources, not cert-manager's issuers.
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: {{ include "qleet-agent.applyVerbs" . }}
- apiGroups: ["externaldns.k8s.io"]
  resources: ["dnsendpoints"]
  verbs: {{ include "qleet-agent.applyVerbs" . }}
# Events are only read, to report what happened to a rollout.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["get", "list", "watch"]
{{- end -}}
