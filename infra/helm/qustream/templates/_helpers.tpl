{{/* Name of a role's objects: <release>-<role>. */}}
{{- define "qustream.name" -}}
{{- printf "%s-%s" .root.Release.Name .role | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qustream.labels" -}}
app.kubernetes.io/name: qustream
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
app.kubernetes.io/part-of: qustream
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* Labels that select one role's pods. */}}
{{- define "qustream.selector" -}}
app.kubernetes.io/name: qustream
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{/* Labels shared by every QuStream pod of the release (NetworkPolicy default deny). */}}
{{- define "qustream.podsOfRelease" -}}
app.kubernetes.io/name: qustream
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "qustream.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{ printf "%s@%s" $img.repository $img.digest }}
{{- else -}}
{{ printf "%s:%s" $img.repository (required "image.tag is required" $img.tag) }}
{{- end -}}
{{- end -}}

{{- define "qustream.aclPrefix" -}}
{{- .Values.kafka.aclPrefix | default .Values.topicPrefix -}}
{{- end -}}

{{- define "qustream.kafkaTopicObjectName" -}}
{{- printf "%s%s" .prefix .topic | lower | replace "." "-" | replace "_" "-" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Pod-level security context of every QuStream pod. */}}
{{- define "qustream.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podDefaults.runAsUser }}
runAsGroup: {{ .Values.podDefaults.runAsGroup }}
fsGroup: {{ .Values.podDefaults.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "qustream.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
{{- end -}}

{{/*
Environment of every QuStream container: Kafka over TLS + SCRAM-SHA-512 as the role's KafkaUser
(password from the Secret the Strimzi user operator writes), topic prefix, state dir, telemetry.
Call with (dict "root" $ "role" "gateway" "cassandra" true).
*/}}
{{- define "qustream.env" -}}
{{- $v := .root.Values -}}
- name: QUSTREAM_KAFKA_BOOTSTRAP_SERVERS
  value: {{ printf "%s-kafka-bootstrap:%d" $v.kafka.clusterName (int $v.kafka.listener.port) | quote }}
- name: QUSTREAM_KAFKA_SECURITY_PROTOCOL
  value: SASL_SSL
- name: QUSTREAM_KAFKA_SASL_MECHANISM
  value: SCRAM-SHA-512
- name: QUSTREAM_KAFKA_SASL_USERNAME
  value: {{ include "qustream.name" . | quote }}
- name: QUSTREAM_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "qustream.name" . }}
      key: password
- name: QUSTREAM_KAFKA_SSL_CA_LOCATION
  value: /etc/qustream/kafka-ca/ca.crt
- name: QUSTREAM_KAFKA_REPLICATION_FACTOR
  value: "3"
- name: QUSTREAM_TOPIC_PREFIX
  value: {{ $v.topicPrefix | quote }}
- name: QUSTREAM_STATE_DIR
  value: {{ $v.stateDir | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "qustream-%s" .role | quote }}
{{- if $v.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $v.otel.endpoint | quote }}
{{- else }}
- name: OTEL_SDK_DISABLED
  value: "true"
{{- end }}
{{- /* Read by the image's HEALTHCHECK (infra/docker/healthcheck.py) outside Kubernetes. */}}
- name: QUSTREAM_HEALTHCHECK_URL
{{- if .httpPort }}
  value: {{ printf "http://127.0.0.1:%d/healthz" (int .httpPort) | quote }}
{{- else }}
  value: {{ printf "http://127.0.0.1:%d/metrics" (int $v.metrics.port) | quote }}
{{- end }}
{{- if .cassandra }}
- name: QUSTREAM_CASSANDRA_CONTACT_POINTS
  value: {{ printf "%s-%s-service" $v.cassandra.clusterName $v.cassandra.datacenter.name | quote }}
- name: QUSTREAM_CASSANDRA_PORT
  value: {{ $v.cassandra.port | quote }}
- name: QUSTREAM_CASSANDRA_LOCAL_DATACENTER
  value: {{ $v.cassandra.datacenter.name | quote }}
- name: QUSTREAM_CASSANDRA_KEYSPACE
  value: {{ $v.cassandra.keyspace | quote }}
- name: QUSTREAM_CASSANDRA_REPLICATION_FACTOR
  value: {{ $v.cassandra.replicationFactor | quote }}
- name: QUSTREAM_CASSANDRA_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $v.cassandra.credentialsSecret.name }}
      key: {{ $v.cassandra.credentialsSecret.usernameKey }}
- name: QUSTREAM_CASSANDRA_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.cassandra.credentialsSecret.name }}
      key: {{ $v.cassandra.credentialsSecret.passwordKey }}
{{- end }}
{{- end -}}

{{/* Volume mounts of every QuStream container (tmp, state, Kafka CA). */}}
{{- define "qustream.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: state
  mountPath: {{ .Values.stateDir }}
- name: kafka-ca
  mountPath: /etc/qustream/kafka-ca
  readOnly: true
{{- end -}}

{{- define "qustream.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.podDefaults.tmpSizeLimit }}
- name: kafka-ca
  secret:
    secretName: {{ printf "%s-cluster-ca-cert" .Values.kafka.clusterName }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end -}}

{{- define "qustream.genesisMount" -}}
- name: genesis
  mountPath: /etc/qustream/genesis.json
  subPath: genesis.json
  readOnly: true
{{- end -}}

{{- define "qustream.genesisVolume" -}}
- name: genesis
  configMap:
    name: {{ .Values.genesis.configMapName }}
{{- end -}}

{{- define "qustream.metricsPort" -}}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end -}}

{{/* Liveness/readiness on the metrics endpoint, for roles without their own health routes. */}}
{{- define "qustream.metricsProbes" -}}
livenessProbe:
  httpGet:
    path: /metrics
    port: metrics
  initialDelaySeconds: 10
  periodSeconds: 20
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /metrics
    port: metrics
  periodSeconds: 10
{{- end -}}

{{/* Pod-spec fields shared by every QuStream pod. */}}
{{- define "qustream.podCommon" -}}
serviceAccountName: {{ include "qustream.name" . }}
automountServiceAccountToken: false
enableServiceLinks: false
terminationGracePeriodSeconds: {{ .root.Values.podDefaults.terminationGracePeriodSeconds }}
securityContext:
  {{- include "qustream.podSecurityContext" .root | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .root.Values.podDefaults.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}
