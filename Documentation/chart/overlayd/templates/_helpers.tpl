{{/* The image every overlayd container runs. */}}
{{- define "overlayd.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The labels selecting overlayd's pods; the DaemonSet's selector is immutable. */}}
{{- define "overlayd.selector" -}}
app.kubernetes.io/name: overlayd
{{- end -}}
