{{/* vim: set filetype=mustache: */}}

{{/* The chart name, overridable. */}}
{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name prefix of every resource: the release name if it already contains the chart name,
else <release>-<chart>. Truncated so that "<fullname>-<service>" stays within 63 characters.
*/}}
{{- define "switchyard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "switchyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every resource of the release. */}}
{{- define "switchyard.labels" -}}
helm.sh/chart: {{ include "switchyard.chart" . }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchyard
{{- end }}

{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component; call with (dict "root" $ "component" "credentials"). */}}
{{- define "switchyard.componentLabels" -}}
{{ include "switchyard.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "switchyard.componentSelectorLabels" -}}
{{ include "switchyard.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The name of one service's Deployment, Service, PDB and HPA. */}}
{{- define "switchyard.componentName" -}}
{{- printf "%s-%s" (include "switchyard.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "switchyard.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Names of the enabled services, sorted. */}}
{{- define "switchyard.enabledServices" -}}
{{- $names := list }}
{{- range $name, $svc := .Values.services }}
{{- if $svc.enabled }}
{{- $names = append $names $name }}
{{- end }}
{{- end }}
{{- toJson (sortAlpha $names) }}
{{- end }}

{{/*
The effective settings of one service: `defaults` with every key that `services.<name>` sets
replacing the default (one level deeper for pdb and autoscaling), and `env` appended.
A plain key-by-key overlay on purpose: sprig's merge functions cannot override true with false.
Call with (dict "root" $ "name" "credentials"); returns YAML.
*/}}
{{- define "switchyard.serviceSettings" -}}
{{- $defaults := deepCopy .root.Values.defaults }}
{{- $svc := index .root.Values.services .name | default dict }}
{{- $out := $defaults }}
{{- range $key, $value := $svc }}
{{- if and (has $key (list "pdb" "autoscaling")) (kindIs "map" $value) }}
{{- $nested := deepCopy (index $defaults $key | default dict) }}
{{- range $k, $v := $value }}
{{- $_ := set $nested $k $v }}
{{- end }}
{{- $_ := set $out $key $nested }}
{{- else if eq $key "env" }}
{{- $_ := set $out "env" (concat ($defaults.env | default list) ($value | default list)) }}
{{- else }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* ---------------------------------------------------------------------------------------
TOML rendering. Helm reads numbers from values files as float64 and the built-in toToml would
write 4194304 as 4.194304e+06, so the chart renders TOML itself.
--------------------------------------------------------------------------------------------- */}}

{{/* A TOML key: bare when it can be, else a quoted key. */}}
{{- define "switchyard.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/* A TOML value: strings as JSON strings (a valid TOML basic string), integral floats as integers. */}}
{{- define "switchyard.toml.value" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ toString . }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "uint64" .) }}{{ toString . }}
{{- else if kindIs "float64" . }}{{ if eq . (floor .) }}{{ int64 . }}{{ else }}{{ toString . }}{{ end }}
{{- else if kindIs "slice" . }}[{{ $items := list }}{{ range . }}{{ $items = append $items (include "switchyard.toml.value" .) }}{{ end }}{{ join ", " $items }}]
{{- else }}{{ fail (printf "switchyard: cannot write %v (%s) to TOML" . (kindOf .)) }}
{{- end }}
{{- end }}

{{/*
One TOML table: its scalar keys, then each sub-table under a [dotted.header]. Keys whose value is
null or "" are left out. Call with (list $map "dotted.prefix").
*/}}
{{- define "switchyard.toml.table" -}}
{{- $table := index . 0 }}
{{- $prefix := index . 1 }}
{{- range $key, $value := $table }}
{{- if and (not (kindIs "map" $value)) (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
{{ include "switchyard.toml.key" $key }} = {{ include "switchyard.toml.value" $value }}
{{- end }}
{{- end }}
{{- range $key, $value := $table }}
{{- if kindIs "map" $value }}
{{- $header := include "switchyard.toml.key" $key }}
{{- if $prefix }}{{ $header = printf "%s.%s" $prefix $header }}{{ end }}

[{{ $header }}]
{{- include "switchyard.toml.table" (list $value $header) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The configuration as a map with the TOML file's keys, before rendering. Returns YAML. */}}
{{- define "switchyard.configMap" -}}
{{- $v := .Values }}
{{- $c := $v.config }}
{{- $cfg := dict
  "grpc_addr" (printf "0.0.0.0:%v" (int64 $v.ports.grpc))
  "http_addr" (printf "0.0.0.0:%v" (int64 $v.ports.http))
  "data_dir" $c.dataDir
  "log" (dict "format" $c.log.format "level" $c.log.level)
  "server" (dict
    "max_concurrency" $c.server.maxConcurrency
    "max_message_bytes" $c.server.maxMessageBytes
    "default_deadline" $c.server.defaultDeadline
    "drain_delay" $c.server.drainDelay
    "shutdown_timeout" $c.server.shutdownTimeout)
  "database" (dict "pool_size" $v.database.poolSize)
  "auth" (dict
    "issuer" $v.auth.issuer
    "audience" $v.auth.audience
    "jwks_url" $v.auth.jwksUrl
    "leeway" $v.auth.leeway
    "public_health" $v.auth.publicHealth)
  "credentials" (dict
    "recovery_window" $c.credentials.recoveryWindow
    "rotation_check_interval" $c.credentials.rotationCheckInterval
    "expiry_warning" $c.credentials.expiryWarning)
}}
{{- if eq $v.secrets.backend "vault" }}
{{- $vault := $v.secrets.vault }}
{{- $method := $vault.auth.method }}
{{- $auth := dict "method" $method }}
{{- if eq $method "kubernetes" }}
{{- $auth = merge $auth (dict "role" $vault.auth.kubernetes.role "jwt_path" $vault.auth.kubernetes.jwtPath "mount" $vault.auth.kubernetes.mount) }}
{{- else if eq $method "approle" }}
{{- $auth = merge $auth (dict "role_id" $vault.auth.approle.roleId "mount" $vault.auth.approle.mount) }}
{{- end }}
{{- $_ := set $cfg "secrets" (dict
  "backend" "vault"
  "address" $vault.address
  "namespace" $vault.namespace
  "kv_mount" $vault.kvMount
  "kv_prefix" $vault.kvPrefix
  "transit_mount" $vault.transitMount
  "transit_key" $vault.transitKey
  "request_timeout" $vault.requestTimeout
  "ca_cert" $vault.caCert
  "auth" $auth) }}
{{- else }}
{{- $_ := set $cfg "secrets" (dict "backend" "embedded") }}
{{- end }}
{{- /* The API gateway calls each other enabled service at its Service. */}}
{{- if (index $v.services "gateway").enabled }}
{{- $upstreams := dict }}
{{- range $name, $package := dict "credentials" "switchyard.credentials.v1" "ai" "switchyard.ai.v1" }}
{{- if (index $v.services $name).enabled }}
{{- $_ := set $upstreams $package (printf "http://%s:%v" (include "switchyard.componentName" (dict "root" $ "component" $name)) (int64 $v.ports.grpc)) }}
{{- end }}
{{- end }}
{{- $_ := set $cfg "gateway" (dict "api" (dict "upstreams" $upstreams)) }}
{{- end }}
{{- toYaml (mustMergeOverwrite $cfg (deepCopy (.Values.extraConfig | default dict))) }}
{{- end }}

{{/* The TOML file. */}}
{{- define "switchyard.configToml" -}}
# Rendered by the switchyard Helm chart. Secrets are not here: they come from Secrets as
# SWITCHYARD_<SECTION>__<KEY> environment variables, which override this file.
{{- include "switchyard.toml.table" (list (include "switchyard.configMap" . | fromYaml) "") }}
{{ end }}

{{- define "switchyard.configChecksum" -}}
{{- include "switchyard.configToml" . | sha256sum }}
{{- end }}

{{/* A Go-style duration ("5s", "1m30s", "500ms") in whole seconds, rounded up; "" if not parseable. */}}
{{- define "switchyard.durationSeconds" -}}
{{- $d := toString . }}
{{- if regexMatch "^([0-9]+(ms|s|m|h))+$" $d }}
{{- $ms := 0 }}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" $d -1 }}
{{- $n := regexFind "^[0-9]+" . | int }}
{{- $unit := trimPrefix (regexFind "^[0-9]+" .) . }}
{{- $ms = add $ms (mul $n (get (dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000) $unit)) }}
{{- end }}
{{- div (add $ms 999) 1000 }}
{{- end }}
{{- end }}

{{/* Checks of values that the schema cannot express. Rendered (empty) from configmap.yaml. */}}
{{- define "switchyard.validate" -}}
{{- $v := .Values }}
{{- if eq (len (include "switchyard.enabledServices" . | fromJsonArray)) 0 }}
{{- fail "switchyard: no service is enabled; set services.<name>.enabled=true for at least one" }}
{{- end }}
{{- if not $v.database.existingSecret }}
{{- fail "switchyard: database.existingSecret is required (a Secret whose key database.existingSecretKey holds the PostgreSQL URL)" }}
{{- end }}
{{- if and (not $v.auth.jwksUrl) (not $v.auth.existingSecret) }}
{{- fail "switchyard: set auth.jwksUrl, or auth.existingSecret (a Secret holding the HS256 key), or both" }}
{{- end }}
{{- if eq $v.secrets.backend "vault" }}
{{- if not $v.secrets.vault.address }}
{{- fail "switchyard: secrets.vault.address is required with secrets.backend=vault" }}
{{- end }}
{{- $method := $v.secrets.vault.auth.method }}
{{- if and (eq $method "approle") (or (not $v.secrets.vault.auth.approle.roleId) (not $v.secrets.vault.auth.approle.existingSecret)) }}
{{- fail "switchyard: secrets.vault.auth.method=approle needs secrets.vault.auth.approle.roleId and .existingSecret (holding the secret_id)" }}
{{- end }}
{{- if and (eq $method "token") (not $v.secrets.vault.auth.token.existingSecret) }}
{{- fail "switchyard: secrets.vault.auth.method=token needs secrets.vault.auth.token.existingSecret" }}
{{- end }}
{{- if and (eq $method "kubernetes") (not $v.serviceAccount.automountServiceAccountToken) (hasPrefix "/var/run/secrets/kubernetes.io/serviceaccount/" $v.secrets.vault.auth.kubernetes.jwtPath) }}
{{- fail "switchyard: Vault Kubernetes auth reads the service account token, so serviceAccount.automountServiceAccountToken must be true (or mount a projected token at secrets.vault.auth.kubernetes.jwtPath)" }}
{{- end }}
{{- else if not $v.secrets.embedded.existingSecret }}
{{- fail "switchyard: secrets.backend=embedded needs secrets.embedded.existingSecret (a Secret holding base64 of 32 random bytes)" }}
{{- end }}
{{- $extra := $v.extraConfig | default dict }}
{{- $forbidden := list (list "database" "url") (list "auth" "hs256_secret") (list "secrets" "master_key") (list "secrets" "auth" "secret_id") (list "secrets" "auth" "token") (list "gateway" "api" "rate_limit_redis") (list "gateway" "credentials_token") (list "gateway" "oauth_state_key") (list "ai" "credentials_token") }}
{{- range $forbidden }}
{{- $node := $extra }}
{{- $found := true }}
{{- range . }}
{{- if and $found (kindIs "map" $node) (hasKey $node .) }}{{ $node = index $node . }}{{ else }}{{ $found = false }}{{ end }}
{{- end }}
{{- if $found }}
{{- fail (printf "switchyard: extraConfig.%s is a secret and must not be in the ConfigMap; pass it as an env var from a Secret" (join "." .)) }}
{{- end }}
{{- end }}
{{- $drain := include "switchyard.durationSeconds" $v.config.server.drainDelay }}
{{- $shutdown := include "switchyard.durationSeconds" $v.config.server.shutdownTimeout }}
{{- if and $drain $shutdown }}
{{- range $name := include "switchyard.enabledServices" $ | fromJsonArray }}
{{- $s := include "switchyard.serviceSettings" (dict "root" $ "name" $name) | fromYaml }}
{{- if le (int64 $s.terminationGracePeriodSeconds) (add $drain $shutdown) }}
{{- fail (printf "switchyard: terminationGracePeriodSeconds of %s (%v) must exceed server.drainDelay + server.shutdownTimeout (%vs)" $name $s.terminationGracePeriodSeconds (add $drain $shutdown)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Environment shared by every switchyard container: the config path and the Secret references. */}}
{{- define "switchyard.env" -}}
- name: SWITCHYARD_CONFIG
  value: /etc/switchyard/switchyard.toml
- name: SWITCHYARD_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
{{- if .Values.auth.existingSecret }}
- name: SWITCHYARD_AUTH__HS256_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auth.existingSecret }}
      key: {{ .Values.auth.existingSecretKey }}
{{- end }}
{{- if eq .Values.secrets.backend "vault" }}
{{- $auth := .Values.secrets.vault.auth }}
{{- if eq $auth.method "approle" }}
- name: SWITCHYARD_SECRETS__AUTH__SECRET_ID
  valueFrom:
    secretKeyRef:
      name: {{ $auth.approle.existingSecret }}
      key: {{ $auth.approle.existingSecretKey }}
{{- else if eq $auth.method "token" }}
- name: SWITCHYARD_SECRETS__AUTH__TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $auth.token.existingSecret }}
      key: {{ $auth.token.existingSecretKey }}
{{- end }}
{{- else }}
- name: SWITCHYARD_SECRETS__MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.embedded.existingSecret }}
      key: {{ .Values.secrets.embedded.existingSecretKey }}
{{- end }}
{{- end }}

{{/* Volumes shared by every switchyard pod; call with (dict "root" $ "configMap" "<name>"). */}}
{{- define "switchyard.volumes" -}}
- name: config
  configMap:
    name: {{ .configMap }}
- name: data
  emptyDir:
    {{- include "switchyard.emptyDirSpec" .root | nindent 4 }}
- name: tmp
  emptyDir:
    {{- include "switchyard.emptyDirSpec" .root | nindent 4 }}
{{- with .root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "switchyard.emptyDirSpec" -}}
{{- $spec := dict }}
{{- with .Values.emptyDir.medium }}{{ $_ := set $spec "medium" . }}{{ end }}
{{- with .Values.emptyDir.sizeLimit }}{{ $_ := set $spec "sizeLimit" . }}{{ end }}
{{- if $spec }}{{ toYaml $spec }}{{ else }}{}{{ end }}
{{- end }}

{{- define "switchyard.volumeMounts" -}}
- name: config
  mountPath: /etc/switchyard
  readOnly: true
- name: data
  mountPath: {{ .Values.config.dataDir }}
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}
