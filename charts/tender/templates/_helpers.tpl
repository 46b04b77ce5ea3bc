{{/* Chart name, overridable with nameOverride. */}}
{{- define "tender.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name, the prefix of every resource: fullnameOverride, else the release
name when it already contains the chart name, else <release>-<chart>.
*/}}
{{- define "tender.fullname" -}}
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

{{- define "tender.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the controller pods; never change across upgrades. */}}
{{- define "tender.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tender.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "tender.labels" -}}
helm.sh/chart: {{ include "tender.chart" . }}
{{ include "tender.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tender
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tender.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tender.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tender.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
What the controller may do with the objects it manages: Tender's resources,
their status and finalizers, Events, and the Secrets of file-level recovery
sessions. A ClusterRole for all namespaces, or a Role in watchNamespace.
*/}}
{{- define "tender.managedRules" -}}
# Jobs: watched, finalizers patched; delete: TTL after finished removes
# finished jobs.
- apiGroups: ["tender.dev"]
  resources: ["backupjobs", "restorejobs", "retentionjobs", "verificationjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# A BackupPolicy's runs: the controller creates their BackupJobs and
# RetentionJobs and VerificationJobs.
- apiGroups: ["tender.dev"]
  resources: ["backupjobs", "retentionjobs", "verificationjobs"]
  verbs: ["create"]
- apiGroups: ["tender.dev"]
  resources: ["backuppolicies"]
  verbs: ["get", "list", "watch"]
# The runs' owner references block the policy's deletion until they are
# gone (the OwnerReferencesPermissionEnforcement admission plugin asks
# for this).
- apiGroups: ["tender.dev"]
  resources: ["backuppolicies/finalizers"]
  verbs: ["update"]
- apiGroups: ["tender.dev"]
  resources: ["backupjobs/status", "restorejobs/status", "retentionjobs/status", "verificationjobs/status", "backuppolicies/status"]
  verbs: ["patch"]
# The restore-point catalog: the controller makes one RestorePoint per
# restore point it lists and deletes those whose manifest is gone (never
# data: a RestorePoint is a view); a verification reads the one it
# records its result on.
- apiGroups: ["tender.dev"]
  resources: ["restorepoints"]
  verbs: ["get", "list", "create", "delete"]
# Whether the repository records a hold on it.
- apiGroups: ["tender.dev"]
  resources: ["restorepoints/status"]
  verbs: ["patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Session tokens of file-level recovery, next to the RestoreJob (removed
# with it through their owner reference).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "get"]
{{- end }}

{{- /*
The cluster-scoped classes an admin declares: watched, finalizers patched,
status written. Events on them go to namespace default.
*/}}
{{- define "tender.classRules" -}}
- apiGroups: ["tender.dev"]
  resources: ["workerconfigurations", "backuprepositories"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["tender.dev"]
  resources: ["workerconfigurations/status", "backuprepositories/status"]
  verbs: ["patch"]
{{- end }}
