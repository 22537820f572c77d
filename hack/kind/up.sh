#!/bin/sh
# Creates the kind cluster (if missing), loads the image built from this
# tree and deploys a kustomization with it; `make kind-up` runs it.
#
#   hack/kind/up.sh [cluster] [image] [kustomization]
#
# defaults: overlayd, overlayd:dev, hack/kind. hack/kind/canal adds Calico
# for NetworkPolicy (Documentation/canal/README.md). Needs docker, kind and
# kubectl; KIND and KUBECTL name other binaries.
set -eu

cluster=${1:-overlayd}
image=${2:-overlayd:dev}
overlay=${3:-hack/kind}
kind=${KIND:-kind}
kubectl=${KUBECTL:-kubectl}
here=$(dirname "$0")
# The Calico release Documentation/canal is written for; its CRDs are not
# shipped with overlayd.
calico_crds=https://raw.githubusercontent.com/projectcalico/calico/v3.31.3/manifests/crds.yaml

if ! "$kind" get clusters | grep -qx "$cluster"; then
	"$kind" create cluster --name "$cluster" --config "$here/kind-config.yaml"
fi
k() { "$kubectl" --context "kind-$cluster" "$@"; }

"$kind" load docker-image "$image" --name "$cluster"

if k kustomize "$overlay" | grep -q '^  name: calico-node$'; then
	k apply --server-side -f "$calico_crds"
	k wait --for condition=established --timeout=60s crd/felixconfigurations.crd.projectcalico.org
fi

# The image tag stays the same from build to build: restart the pods of a
# DaemonSet that already ran, so that they start the image just loaded.
existed=false
k -n kube-overlayd get daemonset overlayd >/dev/null 2>&1 && existed=true
k apply --server-side -k "$overlay"
if $existed; then
	k -n kube-overlayd rollout restart daemonset/overlayd
fi
k -n kube-overlayd rollout status daemonset/overlayd --timeout=5m
if k -n kube-overlayd get daemonset calico-node >/dev/null 2>&1; then
	k -n kube-overlayd rollout status daemonset/calico-node --timeout=5m
fi
k wait --for condition=Ready nodes --all --timeout=5m
k get nodes -o wide
