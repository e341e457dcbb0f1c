{{/* The chart's name, or nameOverride. */}}
{{- define "ebpflb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names: the release name when it already says ebpflb (`helm install ebpflb` -> ds/ebpflb). */}}
{{- define "ebpflb.fullname" -}}
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

{{/* The metrics Service's name: a Service name is a DNS label (63 characters at most), so the
     fullname is cut to leave room for "-metrics". */}}
{{- define "ebpflb.metricsServiceName" -}}
{{- printf "%s-metrics" (include "ebpflb.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "ebpflb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ebpflb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ebpflb.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ebpflb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "ebpflb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ebpflb.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ebpflb.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* The venv's CLI inside the image (Dockerfile). */}}
{{- define "ebpflb.bin" -}}
/opt/ebpflb/.venv/bin/ebpflb
{{- end }}

{{/* Non-empty when the metrics are bound to the node's loopback: the probes then ask 127.0.0.1
     (kubelet shares the node's network namespace) instead of the pod IP (the node's address). */}}
{{- define "ebpflb.probeOnLoopback" -}}
{{- if has (toString .Values.metrics.bindAddress) (list "127.0.0.1" "localhost") }}true{{ end }}
{{- end }}

{{/* `ebpflb agent` flags from values; an empty value keeps the agent's default. */}}
{{- define "ebpflb.agentArgs" -}}
{{- $a := .Values.agent }}
{{- if and $a.kubeconfig.secretName $a.manifests.configMapName }}
{{- fail "agent.kubeconfig.secretName and agent.manifests.configMapName exclude each other (--kubeconfig, --manifests)" }}
{{- end }}
{{- if not (hasPrefix "/sys/fs/bpf/" $a.pinDir) }}
{{- fail "agent.pinDir must be under /sys/fs/bpf/ (the host's bpffs, the only bpffs mounted)" }}
{{- end }}
{{- if not $a.cgroupRoot }}
{{- fail "agent.cgroupRoot is required: the host's cgroup v2 root is mounted there (cgroup.hostRoot)" }}
{{- end }}
{{- if not .Values.metrics.port }}
{{- fail "metrics.port is required: the probes use /healthz and /readyz" }}
{{- end }}
- "--node-name=$(NODE_NAME)"
{{- if $a.kubeconfig.secretName }}
- {{ printf "--kubeconfig=/etc/ebpflb/kubeconfig/%s" $a.kubeconfig.key | quote }}
{{- end }}
{{- if $a.manifests.configMapName }}
- "--manifests=/etc/ebpflb/manifests"
{{- end }}
- {{ printf "--pin-dir=%s" $a.pinDir | quote }}
- {{ printf "--min-sync-period=%v" $a.minSyncPeriod | quote }}
{{- if .Values.kubeProxyPorts.enabled }}
- {{ printf "--metrics-addr=%s:%v,%s" .Values.metrics.bindAddress .Values.metrics.port .Values.kubeProxyPorts.metricsBindAddress | quote }}
- {{ printf "--healthz-addr=%s" .Values.kubeProxyPorts.healthzBindAddress | quote }}
{{- else }}
- {{ printf "--metrics-addr=%s:%v" .Values.metrics.bindAddress .Values.metrics.port | quote }}
{{- end }}
- {{ printf "--healthz-timeout=%v" $a.healthzTimeout | quote }}
{{- with $a.uplinks }}
- {{ printf "--uplinks=%s" . | quote }}
{{- end }}
{{- with $a.nodeportAddresses }}
- {{ printf "--nodeport-addresses=%s" . | quote }}
{{- end }}
- {{ printf "--xdp=%s" $a.xdp | quote }}
- {{ printf "--socket-lb=%s" $a.socketLb | quote }}
- {{ printf "--cgroup-root=%s" $a.cgroupRoot | quote }}
{{- if $a.localhostNodeports }}
- "--localhost-nodeports"
{{- end }}
{{- with $a.workloadIfaces }}
- {{ printf "--workload-ifaces=%s" . | quote }}
{{- end }}
{{- with $a.proxyName }}
- {{ printf "--proxy-name=%s" . | quote }}
{{- end }}
{{- with $a.ctTimeouts }}
- {{ printf "--ct-timeouts=%s" . | quote }}
{{- end }}
- {{ printf "--ct-sweep-interval=%v" $a.ctSweepInterval | quote }}
{{- with $a.hairpinAddr }}
- {{ printf "--hairpin-addr=%s" . | quote }}
{{- end }}
- {{ printf "--icmp-rate=%v" $a.icmpRate | quote }}
- {{ printf "--icmp-burst=%v" $a.icmpBurst | quote }}
{{- with $a.ctMapMax }}
- {{ printf "--ct-map-max=%v" . | quote }}
{{- end }}
{{- with $a.frontendMapMax }}
- {{ printf "--frontend-map-max=%v" . | quote }}
{{- end }}
{{- with $a.backendMapMax }}
- {{ printf "--backend-map-max=%v" . | quote }}
{{- end }}
- {{ printf "--no-endpoints=%s" $a.noEndpoints | quote }}
{{- if $a.bpfTrace }}
- "--bpf-trace"
{{- end }}
{{- range $a.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
