{{/*
The pod template of a QuStream role. Arguments (a dict):
  root       the chart root context
  role       the role (component label, ServiceAccount, KafkaUser)
  extraLabels  labels added to the pod (e.g. the validator identity)
  args       arguments after `qustream`
  resources  requests and limits
  cassandra  true when the role talks to Cassandra
  genesis    true when the role needs the genesis file
  keySecret / keyKey  a Secret with the role's signing key, mounted at /etc/qustream/key
  stateVolume  a volume definition for "state" (nil = none, the StatefulSet's claim provides it)
  httpPort   the gateway's HTTP port (adds the http port and /healthz, /readyz probes)
  device     a host device to map in (qrng) and deviceGroup
  nodeSelector / tolerations  scheduling
*/}}
{{- define "qustream.podTemplate" -}}
{{- $v := .root.Values -}}
metadata:
  labels:
    {{- include "qustream.labels" . | nindent 4 }}
    {{- with .extraLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- include "qustream.podCommon" . | nindent 2 }}
  {{- with (.nodeSelector | default $v.podDefaults.nodeSelector) }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (.tolerations | default $v.podDefaults.tolerations) }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .role }}
      image: {{ include "qustream.image" .root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args:
        {{- toYaml .args | nindent 8 }}
      env:
        {{- include "qustream.env" . | nindent 8 }}
      ports:
        {{- include "qustream.metricsPort" .root | nindent 8 }}
        {{- if .httpPort }}
        - name: http
          containerPort: {{ .httpPort }}
          protocol: TCP
        {{- end }}
      {{- if .httpPort }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        initialDelaySeconds: 10
        periodSeconds: 20
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        periodSeconds: 5
      {{- else }}
      {{- include "qustream.metricsProbes" . | nindent 6 }}
      {{- end }}
      resources:
        {{- required (printf "%s: resources are required" .role) .resources | toYaml | nindent 8 }}
      securityContext:
        {{- include "qustream.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        {{- include "qustream.volumeMounts" .root | nindent 8 }}
        {{- if .genesis }}
        {{- include "qustream.genesisMount" . | nindent 8 }}
        {{- end }}
        {{- if .keySecret }}
        - name: key
          mountPath: /etc/qustream/key
          readOnly: true
        {{- end }}
        {{- if .device }}
        - name: qrng-device
          mountPath: {{ .device }}
        {{- end }}
  volumes:
    {{- include "qustream.volumes" .root | nindent 4 }}
    {{- with .stateVolume }}
    - name: state
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- if .genesis }}
    {{- include "qustream.genesisVolume" .root | nindent 4 }}
    {{- end }}
    {{- if .keySecret }}
    - name: key
      secret:
        secretName: {{ .keySecret }}
        defaultMode: 0400
        items:
          - key: {{ .keyKey }}
            path: {{ .keyKey }}
    {{- end }}
    {{- if .device }}
    - name: qrng-device
      hostPath:
        path: {{ .device }}
        type: CharDevice
    {{- end }}
{{- end -}}

{{/* A Deployment for a role; `replicas` and `recreate` (never two pods at once) as arguments. */}}
{{- define "qustream.deployment" -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .name | default (include "qustream.name" .) }}
  labels:
    {{- include "qustream.labels" . | nindent 4 }}
spec:
  {{- if not .autoscaled }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "qustream.selector" . | nindent 6 }}
      {{- with .extraLabels }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
  strategy:
    {{- if .recreate }}
    type: Recreate
    {{- else }}
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
    {{- end }}
  template:
    {{- include "qustream.podTemplate" . | nindent 4 }}
{{- end -}}
