{{/*
Name of the chart (nameOverride wins).
*/}}
{{- define "cp-pipeline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Prefix of every resource name. Kept to 30 characters so "<prefix>-<stage>-<8 char chain id>"
stays a valid Job name and CronJob names stay under 52 characters.
*/}}
{{- define "cp-pipeline.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 30 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Name of a stage's resources. Call with (dict "root" $ "stage" "mirror").
*/}}
{{- define "cp-pipeline.stageName" -}}
{{- printf "%s-%s" (include "cp-pipeline.fullname" .root) .stage -}}
{{- end -}}

{{/*
Labels of every resource.
*/}}
{{- define "cp-pipeline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "cp-pipeline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cp-pipeline
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Labels of a stage's resources. Call with (dict "root" $ "stage" "mirror").
*/}}
{{- define "cp-pipeline.stageLabels" -}}
{{ include "cp-pipeline.labels" .root }}
app.kubernetes.io/component: {{ .stage }}
cp-pipeline/stage: {{ .stage }}
{{- end -}}

{{/*
Settings of a stage: jobDefaults overridden by the stage's own keys. Returns YAML.
Call with (dict "root" $ "stage" "mirror").
*/}}
{{- define "cp-pipeline.stageSettings" -}}
{{- $stage := index .root.Values.stages .stage -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.jobDefaults) (deepCopy $stage)) -}}
{{- end -}}

{{/*
Google service account of a stage (Workload Identity).
*/}}
{{- define "cp-pipeline.gcpServiceAccount" -}}
{{- $stage := index .root.Values.stages .stage -}}
{{- if $stage.serviceAccount.gcpServiceAccount -}}
{{- $stage.serviceAccount.gcpServiceAccount -}}
{{- else -}}
{{- printf "cp-%s@%s.iam.gserviceaccount.com" .stage .root.Values.gcp.project -}}
{{- end -}}
{{- end -}}

{{/*
Image reference of a stage.
*/}}
{{- define "cp-pipeline.image" -}}
{{- $stage := index .root.Values.stages .stage -}}
{{- $ref := printf "%s/%s" (trimSuffix "/" .root.Values.image.registry) $stage.image.repository -}}
{{- if $stage.image.digest -}}
{{- printf "%s@%s" $ref $stage.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (default .root.Chart.AppVersion $stage.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
CP_* settings of a stage as a YAML map (name: value); the stage's env wins.
*/}}
{{- define "cp-pipeline.stageEnv" -}}
{{- $v := .root.Values -}}
{{- $stage := index $v.stages .stage -}}
{{- $s := $v.storage -}}
{{- $env := dict "LOG_LEVEL" (default $v.jobDefaults.logLevel $stage.logLevel) "GOOGLE_CLOUD_PROJECT" $v.gcp.project "CP_STAGE" .stage "HOME" "/tmp" "TMPDIR" "/tmp" -}}
{{- if $v.monitoring.pushgateway -}}
{{- $_ := set $env "CP_PUSHGATEWAY" $v.monitoring.pushgateway -}}
{{- end -}}
{{- if $stage.next -}}
{{- $_ := set $env "CP_NEXT_STAGE" (include "cp-pipeline.stageName" (dict "root" .root "stage" $stage.next)) -}}
{{- end -}}
{{- if eq .stage "mirror" -}}
{{- $_ := set $env "CP_MIRROR_SOURCE" $s.mirrorSource -}}
{{- $_ := set $env "CP_RAW" $s.raw -}}
{{- else if eq .stage "untar" -}}
{{- $_ := set $env "CP_RAW" $s.raw -}}
{{- $_ := set $env "CP_UNTAR_TARGET" $s.scans -}}
{{- else if eq .stage "routeviews" -}}
{{- $_ := set $env "CP_IP_METADATA" $s.ipMetadata -}}
{{- else if eq .stage "beam-launcher" -}}
{{- $_ := set $env "CP_INPUT" $s.scans -}}
{{- $_ := set $env "CP_REQUIRE_MARKERS" "true" -}}
{{- $_ := set $env "CP_RESOURCES" $s.resources -}}
{{- $_ := set $env "CP_IP_METADATA" $s.ipMetadata -}}
{{- $_ := set $env "CP_SINK" "bigquery" -}}
{{- $_ := set $env "CP_BQ_PROJECT" $v.gcp.project -}}
{{- $_ := set $env "CP_BQ_DATASET" $v.gcp.bigqueryDataset -}}
{{- $_ := set $env "CP_BQ_LOCATION" $v.gcp.bigqueryLocation -}}
{{- $_ := set $env "CP_TEMP_LOCATION" $s.temp -}}
{{- if hasKey $stage "switchWaitSeconds" -}}
{{- $_ := set $env "CP_SWITCH_WAIT_SECONDS" (toString $stage.switchWaitSeconds) -}}
{{- end -}}
{{- else if eq .stage "queries" -}}
{{- $_ := set $env "CP_BQ_PROJECT" $v.gcp.project -}}
{{- $_ := set $env "CP_BQ_DATASET" $v.gcp.bigqueryDataset -}}
{{- $_ := set $env "CP_BQ_LOCATION" $v.gcp.bigqueryLocation -}}
{{- end -}}
{{- toYaml (mergeOverwrite $env (default (dict) $stage.env)) -}}
{{- end -}}

{{/*
Container arguments of a stage: the stage's args plus, for the beam-launcher, --runner,
the Dataflow project and region and, when the runner is DataflowRunner, the worker image
(--sdk_container_image: exactly the launcher container's own image reference) and the
stages.beam-launcher.dataflow options.
*/}}
{{- define "cp-pipeline.stageArgs" -}}
{{- $v := .root.Values -}}
{{- $stage := index $v.stages .stage -}}
{{- $args := default (list) $stage.args -}}
{{- if eq .stage "beam-launcher" -}}
{{- range $args -}}
{{- if or (eq . "--runner") (hasPrefix "--runner=" .) -}}
{{- fail "stages.beam-launcher.args: set the runner with stages.beam-launcher.runner, not --runner" -}}
{{- end -}}
{{- if hasPrefix "--sdk_container_image" . -}}
{{- fail "stages.beam-launcher.args: --sdk_container_image is set by the chart (the launcher's own image)" -}}
{{- end -}}
{{- end -}}
{{- $args = concat (list "--runner" $stage.runner) $args (list "--project" $v.gcp.project "--region" $v.gcp.region) -}}
{{- if eq $stage.runner "DataflowRunner" -}}
{{- $df := default (dict) $stage.dataflow -}}
{{- $args = append $args (printf "--sdk_container_image=%s" (include "cp-pipeline.image" .)) -}}
{{- range $df.experiments -}}
{{- $args = append $args (printf "--experiments=%s" .) -}}
{{- end -}}
{{- with $df.serviceAccountEmail -}}
{{- $args = append $args (printf "--service_account_email=%s" .) -}}
{{- end -}}
{{- with $df.subnetwork -}}
{{- $args = append $args (printf "--subnetwork=%s" .) -}}
{{- end -}}
{{- if $df.maxNumWorkers -}}
{{- $args = append $args (printf "--max_num_workers=%d" (int $df.maxNumWorkers)) -}}
{{- end -}}
{{- with $df.stagingLocation -}}
{{- $args = append $args (printf "--staging_location=%s" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "args" $args) -}}
{{- end -}}
