#!/usr/bin/env bash
# Renders the shipped manifests from the Helm chart (`make manifests`):
#
#   OUT/kube-overlayd.yml              the chart with its default values, and the
#                                      namespace as an object of the manifest
#   OUT/canal/calico-policy-only.yml   Calico's part of canal.enabled=true, which
#                                      the kustomize component OUT/canal adds
#
#   hack/render-manifests.sh HELM CHART [OUT]    (OUT: Documentation)
#
# test/chart renders into a temporary OUT and fails when the committed
# files differ.
set -euo pipefail

helm=${1:?usage: $0 HELM CHART [OUT]}
chart=${2:?usage: $0 HELM CHART [OUT]}
out=${3:-Documentation}
# The namespace kube-overlayd.yml has always used, and what `helm install
# -n kube-overlayd` gives.
namespace=kube-overlayd
mkdir -p "$out/canal"

{
  cat <<'HEADER'
# overlayd on every Linux node of a cluster.
#
#   kubectl apply -f Documentation/kube-overlayd.yml
#
# Requires kube-controller-manager with --allocate-node-cidrs and a
# --cluster-cidr equal to "Network" below (kubeadm: --pod-network-cidr).
# Install, upgrade and RBAC: Documentation/kubernetes.md. Every setting:
# Documentation/configuration.md.
#
# Rendered from the Helm chart Documentation/chart/overlayd with its default
# values (and namespace.create=true) by `make manifests`: change the chart, not this file (test/chart
# fails when they differ). test/manifests proves this file against a real
# kube-apiserver, test/deploy on real kubelet nodes.
HEADER
  "$helm" template overlayd "$chart" --namespace "$namespace" --set namespace.create=true
} >"$out/kube-overlayd.yml"

{
  cat <<'HEADER'
# Calico's calico-node in policy-only mode next to overlayd: Calico
# enforces NetworkPolicy, overlayd carries the traffic between nodes.
# Part of the kustomize component in this directory; read README.md first
# (Calico's CRDs must be installed before this).
#
# Rendered from the Helm chart Documentation/chart/overlayd with
# canal.enabled=true by `make manifests` (its Calico part; the component's
# kustomization.yaml makes the same change to overlayd's DaemonSet as the
# chart): change the chart, not this file.
HEADER
  "$helm" template overlayd "$chart" --namespace "$namespace" --set canal.enabled=true --show-only templates/calico.yaml
} >"$out/canal/calico-policy-only.yml"
