{{/*
The chart name, or nameOverride.
*/}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name prefix of every object: fullnameOverride, or <release>-<chart>, or
<release> when the release name already contains the chart name. Truncated to 52
characters so that "<fullname>-controller" stays a valid Service name (63).
*/}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
<chart>-<version>, for the helm.sh/chart label.
*/}}
{{- define "sluice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The image tag in use: image.tag, or the chart's appVersion.
*/}}
{{- define "sluice.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The Sluice image reference.
*/}}
{{- define "sluice.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "sluice.tag" .) }}
{{- end }}
{{- end }}

{{/*
The demo agent image: demo.image, falling back to the Sluice image.
*/}}
{{- define "sluice.demoImage" -}}
{{- if or .Values.demo.image.repository .Values.demo.image.tag }}
{{- printf "%s:%s" (.Values.demo.image.repository | default .Values.image.repository) (.Values.demo.image.tag | default (include "sluice.tag" .)) }}
{{- else }}
{{- include "sluice.image" . }}
{{- end }}
{{- end }}

{{/*
Labels that select one component's pods. Call with (dict "root" $ "component" "proxy").
*/}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The standard labels of an object. Call with (dict "root" $ "component" "proxy").
*/}}
{{- define "sluice.labels" -}}
helm.sh/chart: {{ include "sluice.chart" .root }}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ include "sluice.tag" .root | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: sluice
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
"true" when the controller watches the Kubernetes API (mode controller, source
kubernetes), else empty.
*/}}
{{- define "sluice.watchesApi" -}}
{{- if and (eq .Values.mode "controller") (eq .Values.controller.source "kubernetes") }}true{{ end }}
{{- end }}

{{/*
The controller's ServiceAccount when it watches the API.
*/}}
{{- define "sluice.controllerServiceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (printf "%s-controller" (include "sluice.fullname" .)) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The name of the controller's ClusterRole and ClusterRoleBinding: cluster-wide, so it
carries the release namespace, and two releases of the same name do not collide.
*/}}
{{- define "sluice.controllerClusterRoleName" -}}
{{- printf "%s-%s-controller" .Release.Namespace (include "sluice.fullname" .) }}
{{- end }}

{{/*
The Lease that elects the controller replica that writes status and events.
*/}}
{{- define "sluice.leaseName" -}}
{{- printf "%s-controller" (include "sluice.fullname" .) }}
{{- end }}

{{/*
The ConfigMap holding the route manifests.
*/}}
{{- define "sluice.routesConfigMap" -}}
{{- .Values.existingRoutesConfigMap | default (printf "%s-routes" (include "sluice.fullname" .)) }}
{{- end }}

{{/*
The name of the demo agents' StatefulSet and headless Service, at most 52 characters:
a StatefulSet's pods carry a controller-revision-hash label of its name plus 11.
*/}}
{{- define "sluice.demoName" -}}
{{- printf "%s-demo" (include "sluice.fullname" . | trunc 47 | trimSuffix "-") }}
{{- end }}

{{/*
The URL proxies subscribe to in controller mode: https by the Service's cluster DNS
name (the name its certificate must hold) with controller.tls.secretName.
*/}}
{{- define "sluice.controllerURL" -}}
{{- if .Values.controller.tls.secretName }}
{{- printf "https://%s-controller.%s.svc:%d" (include "sluice.fullname" .) .Release.Namespace (int .Values.controller.port) }}
{{- else }}
{{- printf "http://%s-controller:%d" (include "sluice.fullname" .) (int .Values.controller.port) }}
{{- end }}
{{- end }}

{{/*
Where the push token is mounted in the proxies and the controller: a projected
ServiceAccount token (controller.source=kubernetes) or the shared token's Secret.
*/}}
{{- define "sluice.pushTokenPath" -}}
/var/run/secrets/sluice.dev/push/token
{{- end }}

{{/*
The volume of the push token. With the API watched: a projected token of the pod's own
ServiceAccount for controller.auth.audience; otherwise the shared token's Secret.
*/}}
{{- define "sluice.pushTokenVolume" -}}
- name: push-token
{{- if include "sluice.watchesApi" . }}
  projected:
    sources:
      - serviceAccountToken:
          audience: {{ .Values.controller.auth.audience | quote }}
          expirationSeconds: {{ int .Values.controller.auth.tokenExpirationSeconds }}
          path: token
{{- else }}
  secret:
    secretName: {{ include "sluice.pushTokenSecretName" . }}
    items:
      - key: token
        path: token
{{- end }}
{{- end }}

{{/*
The Secret holding the shared push token (controller.source=files).
*/}}
{{- define "sluice.pushTokenSecretName" -}}
{{- .Values.controller.auth.existingSecret | default (printf "%s-push-token" (include "sluice.fullname" .)) }}
{{- end }}

{{/*
The shared push token of the Secret the chart creates: the one already in the Secret
(lookup), else a random one; computed once per render.
*/}}
{{- define "sluice.pushToken" -}}
{{- if not .Values.controller.auth._rendered }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "sluice.pushTokenSecretName" .) }}
{{- $token := dig "data" "token" "" ($existing | default dict) | b64dec }}
{{- $_ := set .Values.controller.auth "_rendered" ($token | default (randAlphaNum 48)) }}
{{- end }}
{{- .Values.controller.auth._rendered }}
{{- end }}

{{/*
A ServiceAccount as NAMESPACE:NAME, for --proxy-service-account and
--peer-service-account. Call with (list $ "name").
*/}}
{{- define "sluice.accountRef" -}}
{{- printf "%s:%s" (index . 0).Release.Namespace (index . 1) }}
{{- end }}

{{/*
The user's routes as a multi-document YAML string (routes may be a list or a string).
*/}}
{{- define "sluice.routesYaml" -}}
{{- if kindIs "string" .Values.routes }}
{{- .Values.routes }}
{{- else }}
{{- range $i, $doc := .Values.routes }}
{{- if $i }}
---
{{ end }}
{{- toYaml $doc }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The demo pools. Call with (dict "root" $ "objects" false): in the routes ConfigMap, in
front of every demo agent by its stable StatefulSet DNS name; with "objects" true: as
AgentPool objects of the release (controller.source=kubernetes), whose backend is the
demo agents' Service, resolved through its EndpointSlices.
*/}}
{{- define "sluice.demoRoutes" -}}
{{- $root := .root }}
{{- $svc := include "sluice.demoName" $root }}
{{- $endpoints := list }}
{{- range $i := until (int $root.Values.demo.replicas) }}
{{- $endpoints = append $endpoints (printf "%s-%d.%s:%d" $svc $i $svc (int $root.Values.demo.port)) }}
{{- end }}
{{- range $i, $pool := list "echo" "chat" }}
{{- if $i }}
---
{{- end }}
{{- if and (eq $pool "echo") (not $.objects) }}
# The demo pools: every demo agent is one endpoint, balanced by Sluice itself.
{{- end }}
apiVersion: sluice.dev/v1alpha1
kind: AgentPool
metadata:
  name: {{ $pool }}
  namespace: {{ $root.Release.Namespace }}
  {{- if $.objects }}
  labels:
    {{- include "sluice.labels" (dict "root" $root "component" "demo-pool") | nindent 4 }}
  {{- end }}
spec:
  {{- if eq $pool "echo" }}
  # The agent answers with a JSON description of the request it received.
  matches:
    - pathPrefix: /agents/echo/
  {{- else }}
  # OpenAI-style chat completions; "stream": true streams server-sent events.
  matches:
    - pathPrefix: /v1/chat/completions
  {{- end }}
  backends:
    {{- if $.objects }}
    - service:
        name: {{ $svc }}
        port: http
    {{- else }}
    - endpoints: {{ toJson $endpoints }}
    {{- end }}
  {{- if eq $pool "echo" }}
  loadBalancing:
    algorithm: RoundRobin
  timeouts:
    connect: 1s
    request: 30s
  {{- else }}
  timeouts:
    connect: 1s
    request: 5m
  {{- end }}
{{- end }}
{{- end }}

{{/*
The pod-level fields shared by every Sluice pod.
*/}}
{{- define "sluice.podCommon" -}}
serviceAccountName: {{ include "sluice.serviceAccountName" . }}
automountServiceAccountToken: false
{{- include "sluice.podPullAndSecurity" . }}
{{- end }}

{{/*
Image pull secrets and the pod security context of every Sluice pod.
*/}}
{{- define "sluice.podPullAndSecurity" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The volume of route manifests.
*/}}
{{- define "sluice.routesVolume" -}}
- name: routes
  configMap:
    name: {{ include "sluice.routesConfigMap" . }}
{{- end }}

{{/*
Scheduling fields of a component. Call with (dict "root" $ "values" <the component's
values> "component" "proxy"): node selection, the topology spread of its
topologySpread and topologySpreadConstraints values (a constraint of the latter on
the same topologyKey replaces the default one), and its priority class (its own,
else the chart's when priorityClass.create, for the proxy and the controller).
*/}}
{{- define "sluice.scheduling" -}}
{{- $v := .values }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $spread := $v.topologySpread | default dict }}
{{- if or $spread.enabled $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- if $spread.enabled }}
  {{- $own := list }}
  {{- range $v.topologySpreadConstraints }}{{ $own = append $own .topologyKey }}{{ end }}
  {{- range $key := list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  {{- if not (has $key $own) }}
  - topologyKey: {{ $key }}
    maxSkew: {{ $spread.maxSkew | default 1 }}
    whenUnsatisfiable: {{ $spread.whenUnsatisfiable | default "ScheduleAnyway" }}
    labelSelector:
      matchLabels:
        {{- include "sluice.selectorLabels" (dict "root" $.root "component" $.component) | nindent 8 }}
  {{- end }}
  {{- end }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- if $v.priorityClassName }}
priorityClassName: {{ $v.priorityClassName }}
{{- else if and .root.Values.priorityClass.create (has .component (list "proxy" "controller")) }}
priorityClassName: {{ include "sluice.priorityClassName" .root }}
{{- end }}
{{- end }}

{{/*
The PriorityClass the chart creates: cluster-scoped, so it carries the release namespace.
*/}}
{{- define "sluice.priorityClassName" -}}
{{- printf "%s-%s" .Release.Namespace (include "sluice.fullname" .) | trunc 253 }}
{{- end }}

{{/*
The proxy's termination grace period: proxy.terminationGracePeriodSeconds, or the
shutdown delay plus the drain timeout plus 10 seconds.
*/}}
{{- define "sluice.proxyGracePeriod" -}}
{{- $p := .Values.proxy }}
{{- if kindIs "invalid" $p.terminationGracePeriodSeconds }}
{{- add (int $p.shutdownDelaySeconds) (int $p.drainTimeoutSeconds) 10 }}
{{- else }}
{{- int $p.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The Secret holding the Redis URL: redis.existingSecret, or the one the chart creates
from redis.url; empty without Redis.
*/}}
{{- define "sluice.redisSecretName" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecret }}
{{- else if .Values.redis.url }}
{{- printf "%s-redis" (include "sluice.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The Secret holding the proxy's admin token: admin.existingSecret, or the one the chart
creates.
*/}}
{{- define "sluice.adminSecretName" -}}
{{- .Values.admin.existingSecret | default (printf "%s-admin" (include "sluice.fullname" .)) }}
{{- end }}

{{/*
The key of the admin token in that Secret.
*/}}
{{- define "sluice.adminSecretKey" -}}
{{- if .Values.admin.existingSecret }}
{{- .Values.admin.existingSecretKey | default "token" }}
{{- else -}}
token
{{- end }}
{{- end }}

{{/*
The admin token of the Secret the chart creates: admin.token; else the token already in
that Secret, so that upgrades keep it (lookup reads the cluster; `helm template` and
client-side dry runs get nothing back); else a random one. Computed once per render and
kept in .Values.admin, so that the Secret and the pods' checksum agree.
*/}}
{{- define "sluice.adminToken" -}}
{{- if not .Values.admin._rendered }}
{{- $token := .Values.admin.token }}
{{- if not $token }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "sluice.adminSecretName" .) }}
{{- $token = dig "data" "token" "" ($existing | default dict) | b64dec }}
{{- end }}
{{- $_ := set .Values.admin "_rendered" ($token | default (randAlphaNum 32)) }}
{{- end }}
{{- .Values.admin._rendered }}
{{- end }}

{{/*
Relabelings of scraped proxy metrics: the `pool` label (namespace/name) copied into
`pool_namespace` and `pool_name`, which the prometheus-adapter rules and HPA selectors use
(a label selector value cannot hold a "/"). Prometheus Operator syntax.
*/}}
{{- define "sluice.poolRelabelings" -}}
- sourceLabels: [pool]
  regex: "([^/]+)/(.+)"
  targetLabel: pool_namespace
  replacement: "${1}"
  action: replace
- sourceLabels: [pool]
  regex: "([^/]+)/(.+)"
  targetLabel: pool_name
  replacement: "${2}"
  action: replace
{{- end }}

{{/*
The prometheus-adapter configuration (rules and externalRules) for Sluice's metrics.
The series carry the labels a ServiceMonitor scrape adds (namespace, pod, service) and
pool_namespace/pool_name from sluice.poolRelabelings.
*/}}
{{- define "sluice.adapterRules" -}}
{{- $window := .Values.adapter.rateWindow -}}
# Custom metrics (custom.metrics.k8s.io) of each proxy pod, summed over its pools: for
# an HPA on the proxy Deployment itself (type: Pods), or on its Service (type: Object).
rules:
  - seriesQuery: 'sluice_requests_in_flight{namespace!="",pod!=""}'
    resources:
      overrides:
        namespace: {resource: namespace}
        pod: {resource: pod}
        service: {resource: service}
    name:
      matches: "^sluice_requests_in_flight$"
      as: sluice_requests_in_flight
    metricsQuery: 'sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})'
  - seriesQuery: 'sluice_requests_total{namespace!="",pod!=""}'
    resources:
      overrides:
        namespace: {resource: namespace}
        pod: {resource: pod}
        service: {resource: service}
    name:
      matches: "^sluice_requests_total$"
      as: sluice_requests_per_second
    metricsQuery: 'sum by (<<.GroupBy>>) (rate(<<.Series>>{<<.LabelMatchers>>}[{{ $window }}]))'
# External metrics (external.metrics.k8s.io) of each pool, summed over every proxy
# replica: for an HPA on the agent Deployment behind the pool. The pool's namespace is
# the HPA's namespace (pool_namespace is mapped to it); select the pool by name with
# `selector: {matchLabels: {pool_name: <name>}}`.
externalRules:
  - seriesQuery: 'sluice_requests_in_flight{pool_namespace!="",pool_name!=""}'
    resources:
      overrides:
        pool_namespace: {resource: namespace}
    name:
      matches: "^sluice_requests_in_flight$"
      as: sluice_requests_in_flight
    metricsQuery: 'sum by (pool_namespace, pool_name) (<<.Series>>{<<.LabelMatchers>>})'
  - seriesQuery: 'sluice_queue_depth{pool_namespace!="",pool_name!=""}'
    resources:
      overrides:
        pool_namespace: {resource: namespace}
    name:
      matches: "^sluice_queue_depth$"
      as: sluice_queue_depth
    metricsQuery: 'sum by (pool_namespace, pool_name) (<<.Series>>{<<.LabelMatchers>>})'
  - seriesQuery: 'sluice_requests_total{pool_namespace!="",pool_name!=""}'
    resources:
      overrides:
        pool_namespace: {resource: namespace}
    name:
      matches: "^sluice_requests_total$"
      as: sluice_requests_per_second
    metricsQuery: 'sum by (pool_namespace, pool_name) (rate(<<.Series>>{<<.LabelMatchers>>}[{{ $window }}]))'
  # The 95th percentile of the time to response headers (queueing included), from the
  # histogram summed over the proxy replicas; 0 while the pool has no traffic (instead of
  # NaN, which the HPA cannot use).
  - seriesQuery: 'sluice_request_duration_seconds_bucket{pool_namespace!="",pool_name!=""}'
    resources:
      overrides:
        pool_namespace: {resource: namespace}
    name:
      matches: "^sluice_request_duration_seconds_bucket$"
      as: sluice_request_duration_p95_seconds
    metricsQuery: 'histogram_quantile(0.95, sum by (pool_namespace, pool_name, le) (rate(<<.Series>>{<<.LabelMatchers>>}[{{ $window }}]))) >= 0 or 0 * sum by (pool_namespace, pool_name) (rate(<<.Series>>{<<.LabelMatchers>>,le="+Inf"}[{{ $window }}]))'
  # Requests in flight over the maxConcurrency of the live endpoints: each proxy replica
  # enforces maxConcurrency for its own requests, so the average over the replicas is the
  # share of the agents' capacity in use (pools whose endpoints all set maxConcurrency).
  - seriesQuery: 'sluice_pool_utilisation{pool_namespace!="",pool_name!=""}'
    resources:
      overrides:
        pool_namespace: {resource: namespace}
    name:
      matches: "^sluice_pool_utilisation$"
      as: sluice_pool_utilisation
    metricsQuery: 'avg by (pool_namespace, pool_name) (<<.Series>>{<<.LabelMatchers>>})'
{{- end }}

{{/*
Checks that hold even when the values schema is skipped (--skip-schema-validation).
*/}}
{{- define "sluice.validate" -}}
{{- if not (has .Values.mode (list "standalone" "controller")) }}
{{- fail (printf "mode must be standalone or controller, not %q" (toString .Values.mode)) }}
{{- end }}
{{- if not (or (kindIs "string" .Values.routes) (kindIs "slice" .Values.routes)) }}
{{- fail "routes must be a list of manifests or a YAML string" }}
{{- end }}
{{- if and .Values.existingRoutesConfigMap .Values.routes }}
{{- fail "set either routes or existingRoutesConfigMap, not both" }}
{{- end }}
{{- if not (has .Values.controller.source (list "kubernetes" "files")) }}
{{- fail (printf "controller.source must be kubernetes or files, not %q" (toString .Values.controller.source)) }}
{{- end }}
{{- if and (include "sluice.watchesApi" .) (or .Values.routes .Values.existingRoutesConfigMap) }}
{{- fail "with mode=controller and controller.source=kubernetes the controller reads AgentPools, RatePolicies and EndpointSlices from the cluster: kubectl apply them and leave routes and existingRoutesConfigMap empty, or set controller.source=files to compile the routes ConfigMap" }}
{{- end }}
{{- if and (include "sluice.watchesApi" .) (not .Values.controller.serviceAccount.create) (not .Values.controller.serviceAccount.name) }}
{{- fail "controller.serviceAccount.name must name the controller's ServiceAccount when controller.serviceAccount.create is false (the namespace's default ServiceAccount would get its rights)" }}
{{- end }}
{{- if and .Values.admin.token .Values.admin.existingSecret }}
{{- fail "set either admin.token or admin.existingSecret, not both" }}
{{- end }}
{{- if and .Values.admin.token (lt (len (toString .Values.admin.token)) 16) }}
{{- fail "admin.token must be at least 16 characters long" }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.existingSecret }}
{{- fail "set either redis.url or redis.existingSecret, not both" }}
{{- end }}
{{- $p := .Values.proxy }}
{{- $grace := int (include "sluice.proxyGracePeriod" .) }}
{{- if lt $grace (add (int $p.shutdownDelaySeconds) (int $p.drainTimeoutSeconds)) }}
{{- fail (printf "proxy.terminationGracePeriodSeconds (%d) must cover proxy.shutdownDelaySeconds + proxy.drainTimeoutSeconds (%d), or the kubelet kills streams still draining" $grace (add (int $p.shutdownDelaySeconds) (int $p.drainTimeoutSeconds))) }}
{{- end }}
{{- if and $p.autoscaling.enabled (lt (int $p.autoscaling.maxReplicas) (int $p.autoscaling.minReplicas)) }}
{{- fail "proxy.autoscaling.maxReplicas must be at least proxy.autoscaling.minReplicas" }}
{{- end }}
{{- if and $p.autoscaling.enabled (not (or $p.autoscaling.targetCPUUtilizationPercentage $p.autoscaling.targetInFlightPerPod)) }}
{{- fail "proxy.autoscaling needs a target: targetCPUUtilizationPercentage or targetInFlightPerPod" }}
{{- end }}
{{- $pdb := $p.podDisruptionBudget }}
{{- $replicas := ternary $p.autoscaling.minReplicas $p.replicas (and $p.autoscaling.enabled true) | int }}
{{- if and $pdb.enabled (gt $replicas 0) }}
{{- if not (kindIs "invalid" $pdb.maxUnavailable) }}
{{- if or (eq (toString $pdb.maxUnavailable) "0") (eq (toString $pdb.maxUnavailable) "0%") }}
{{- fail "proxy.podDisruptionBudget.maxUnavailable 0 lets no node drain evict a proxy: allow 1 or more" }}
{{- end }}
{{- else if or (and (kindIs "string" $pdb.minAvailable) (eq $pdb.minAvailable "100%")) (and (not (kindIs "string" $pdb.minAvailable)) (ge (int $pdb.minAvailable) $replicas)) }}
{{- fail (printf "proxy.podDisruptionBudget.minAvailable %v with %d proxy replica(s) lets no node drain evict a proxy: run more replicas (proxy.replicas, or proxy.autoscaling.minReplicas), lower minAvailable, or set proxy.podDisruptionBudget.enabled=false" $pdb.minAvailable $replicas) }}
{{- end }}
{{- end }}
{{- if and .Values.proxy.tls.enabled (not .Values.proxy.tls.secrets) }}
{{- fail "proxy.tls.enabled needs proxy.tls.secrets: the kubernetes.io/tls Secrets to serve" }}
{{- end }}
{{- if and (not .Values.proxy.tls.plaintext) (not .Values.proxy.tls.enabled) }}
{{- fail "proxy.tls.plaintext=false with proxy.tls.enabled=false: the proxy would serve nothing" }}
{{- end }}
{{- if and (include "sluice.watchesApi" .) .Values.controller.auth.existingSecret }}
{{- fail "controller.auth.existingSecret is for controller.source=files: with source kubernetes, proxies present projected ServiceAccount tokens" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.service.exposeAdmin) }}
{{- fail "serviceMonitor.enabled needs service.exposeAdmin: the ServiceMonitor scrapes the Service's admin port" }}
{{- end }}
{{- end }}

{{/*
The namespaces the controller reads consumer Secrets in: controller.consumerNamespaces,
or the release namespace.
*/}}
{{- define "sluice.consumerNamespaces" -}}
{{- $ns := .Values.controller.consumerNamespaces | default (list .Release.Namespace) -}}
{{- toJson $ns -}}
{{- end }}

{{/*
The namespaces whose AgentPools may name Secrets for their backends, read there only:
controller.upstreamSecretNamespaces, or the release namespace.
*/}}
{{- define "sluice.upstreamSecretNamespaces" -}}
{{- $ns := .Values.controller.upstreamSecretNamespaces | default (list .Release.Namespace) -}}
{{- toJson $ns -}}
{{- end }}

{{/*
The serving certificate of the controller's external metrics port, as a dict with
"crt", "key" and "ca" (PEM), made once per render: read back from the Secret the chart
made before (lookup), else a new CA and a certificate for the controller Service.
*/}}
{{- define "sluice.externalMetricsCert" -}}
{{- $em := .Values.controller.externalMetrics }}
{{- if not $em._rendered }}
{{- $name := printf "%s-external-metrics-tls" (include "sluice.fullname" .) }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $name | default dict }}
{{- $data := dig "data" (dict) $existing }}
{{- if and (hasKey $data "tls.crt") (hasKey $data "tls.key") (hasKey $data "ca.crt") }}
{{- $_ := set $em "_rendered" (dict "crt" (index $data "tls.crt" | b64dec) "key" (index $data "tls.key" | b64dec) "ca" (index $data "ca.crt" | b64dec)) }}
{{- else }}
{{- $service := printf "%s-controller" (include "sluice.fullname" .) }}
{{- $ca := genCA (printf "%s-external-metrics-ca" (include "sluice.fullname" .)) 3650 }}
{{- $names := list $service (printf "%s.%s" $service .Release.Namespace) (printf "%s.%s.svc" $service .Release.Namespace) }}
{{- $cert := genSignedCert (printf "%s.%s.svc" $service .Release.Namespace) nil $names 3650 $ca }}
{{- $_ := set $em "_rendered" (dict "crt" $cert.Cert "key" $cert.Key "ca" $ca.Cert) }}
{{- end }}
{{- end }}
{{- toJson $em._rendered }}
{{- end }}

{{/*
The requestheader client CA (PEM) and allowed names of kube-aggregator's front-proxy
client certificate, as a dict with "ca" and "names": the values, else the ConfigMap
kube-system/extension-apiserver-authentication read with lookup. Fails when neither
holds a CA.
*/}}
{{- define "sluice.requestheader" -}}
{{- $em := .Values.controller.externalMetrics }}
{{- if $em.requestheaderClientCA }}
{{- toJson (dict "ca" $em.requestheaderClientCA "names" $em.requestheaderAllowedNames) }}
{{- else }}
{{- $cm := lookup "v1" "ConfigMap" "kube-system" "extension-apiserver-authentication" | default dict }}
{{- $ca := dig "data" "requestheader-client-ca-file" "" $cm }}
{{- if not $ca }}
{{- fail "controller.externalMetrics.enabled needs the CA of kube-aggregator's front-proxy client certificate: it could not be read from the ConfigMap kube-system/extension-apiserver-authentication (helm template, or no right to read it); set controller.externalMetrics.requestheaderClientCA (kubectl -n kube-system get configmap extension-apiserver-authentication -o jsonpath='{.data.requestheader-client-ca-file}')" }}
{{- end }}
{{- $names := dig "data" "requestheader-allowed-names" "[]" $cm | fromJsonArray }}
{{- toJson (dict "ca" $ca "names" ($em.requestheaderAllowedNames | default $names)) }}
{{- end }}
{{- end }}
