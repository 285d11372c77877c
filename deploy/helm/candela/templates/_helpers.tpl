{{- /*
Helpers shared by every template (the tests lint and render the chart with Helm 4). Helpers are called
with `template` and their output is one-line JSON (valid YAML at any indentation) or lines at the one
depth where they are used (a container's env list, 12 spaces), so no output needs `include | nindent`.
*/ -}}

{{- define "candela.labels" -}}
{"app.kubernetes.io/name": "candela", "app.kubernetes.io/instance": {{ .root.Release.Name | quote }}, "app.kubernetes.io/version": {{ .root.Chart.AppVersion | quote }}, "app.kubernetes.io/managed-by": {{ .root.Release.Service | quote }}, "helm.sh/chart": {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | quote }}, "app.kubernetes.io/component": {{ .component | quote }}}
{{- end -}}

{{- define "candela.selector" -}}
{"app.kubernetes.io/name": "candela", "app.kubernetes.io/instance": {{ .root.Release.Name | quote }}, "app.kubernetes.io/component": {{ .component | quote }}}
{{- end -}}

{{- define "candela.image" -}}
{{ printf "%s/candela-%s:%s" .root.Values.image.repository .component .root.Values.image.tag | quote }}
{{- end -}}

{{- define "candela.podSecurityContext" -}}
{"runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
{{- end -}}

{{- define "candela.containerSecurityContext" -}}
{"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}
{{- end -}}

{{- define "candela.scrapeAnnotations" -}}
{"prometheus.io/scrape": "true", "prometheus.io/port": {{ .port | quote }}, "prometheus.io/path": {{ .path | quote }}}
{{- end -}}

{{- define "candela.env.common" }}
            - name: CANDELA_SERVICE_TOKEN
              valueFrom: {"secretKeyRef": {"name": {{ .Values.serviceToken.existingSecret | quote }}, "key": {{ .Values.serviceToken.key | quote }}}}
            - name: CANDELA_LOG_LEVEL
              value: {{ .Values.logLevel | quote }}
            {{- if .Values.otlpEndpoint }}
            - name: OTEL_EXPORTER_OTLP_ENDPOINT
              value: {{ .Values.otlpEndpoint | quote }}
            {{- end }}
{{- end -}}

{{- define "candela.env.grpcServer" }}
            - name: CANDELA_GRPC_HOST
              value: "0.0.0.0"
            - name: CANDELA_GRPC_PORT
              value: "50051"
            - name: CANDELA_METRICS_HOST
              value: "0.0.0.0"
            - name: CANDELA_METRICS_PORT
              value: "9090"
{{- end -}}

{{- define "candela.env.postgres" }}
            - name: CANDELA_POSTGRES_DSN
              valueFrom: {"secretKeyRef": {"name": {{ .Values.postgres.existingSecret | quote }}, "key": {{ .Values.postgres.dsnKey | quote }}}}
{{- end -}}

{{- define "candela.env.clickhouse" }}
            - name: CANDELA_CLICKHOUSE_HOST
              value: {{ .Values.clickhouse.host | quote }}
            - name: CANDELA_CLICKHOUSE_PORT
              value: {{ .Values.clickhouse.port | quote }}
            - name: CANDELA_CLICKHOUSE_ALT_HOSTS
              value: {{ join "," .Values.clickhouse.altHosts | quote }}
            - name: CANDELA_CLICKHOUSE_MEMBER_RETRY_S
              value: {{ .Values.clickhouse.memberRetrySeconds | quote }}
            - name: CANDELA_CLICKHOUSE_DATABASE
              value: {{ .Values.clickhouse.database | quote }}
            - name: CANDELA_CLICKHOUSE_USER
              value: {{ .Values.clickhouse.user | quote }}
            - name: CANDELA_CLICKHOUSE_CLUSTER
              value: {{ .Values.clickhouse.cluster | quote }}
            - name: CANDELA_CLICKHOUSE_PASSWORD
              valueFrom: {"secretKeyRef": {"name": {{ .Values.clickhouse.existingSecret | quote }}, "key": {{ .Values.clickhouse.passwordKey | quote }}}}
{{- end -}}

{{- define "candela.env.s3" }}
            - name: CANDELA_S3_ENDPOINT
              value: {{ .Values.s3.endpoint | quote }}
            - name: CANDELA_S3_REGION
              value: {{ .Values.s3.region | quote }}
            - name: CANDELA_S3_BUCKET
              value: {{ .Values.s3.bucket | quote }}
            - name: CANDELA_S3_ACCESS_KEY
              valueFrom: {"secretKeyRef": {"name": {{ .Values.s3.existingSecret | quote }}, "key": {{ .Values.s3.accessKeyKey | quote }}}}
            - name: CANDELA_S3_SECRET_KEY
              valueFrom: {"secretKeyRef": {"name": {{ .Values.s3.existingSecret | quote }}, "key": {{ .Values.s3.secretKeyKey | quote }}}}
{{- end -}}

{{- define "candela.env.kafka" }}
            - name: CANDELA_KAFKA_BOOTSTRAP
              value: {{ .Values.kafka.bootstrap | quote }}
            - name: CANDELA_KAFKA_TOPIC
              value: {{ .Values.kafka.topic | quote }}
{{- end -}}

{{- define "candela.env.extra" }}
            {{- range .extraEnv }}
            - {{ toJson . }}
            {{- end }}
{{- end -}}
