# syntax=docker/dockerfile:1
# overlayd's container image: the daemon, iptables and iproute2, and the CNI
# plugins the DaemonSet's init container installs on nodes.
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t overlayd:dev .
#
# See Documentation/kubernetes.md.

ARG GO_VERSION=1.26
# The release bridge, host-local, loopback and portmap come from.
ARG CNI_PLUGINS_VERSION=v1.9.1

FROM golang:${GO_VERSION} AS build
ARG CNI_PLUGINS_VERSION
ARG VERSION=dev
ENV CGO_ENABLED=0
WORKDIR /src
# Dependencies first: they change less often than the code.
COPY go.mod go.sum ./
COPY hack/tools/cni/go.mod hack/tools/cni/go.sum hack/tools/cni/
RUN go mod download && cd hack/tools/cni && go mod download
COPY . .
# overlayd, and the flannel meta plugin of containernetworking/plugins
# v0.9.1 (the plugin that reads subnet.env) exactly as the tests build it.
RUN make build VERSION="${VERSION}" && make cni-bins
RUN mkdir /cni \
 && cp hack/tools/bin/cni/flannel /cni/ \
 && GOBIN=/cni go install -trimpath \
      github.com/containernetworking/plugins/plugins/main/bridge@${CNI_PLUGINS_VERSION} \
      github.com/containernetworking/plugins/plugins/ipam/host-local@${CNI_PLUGINS_VERSION} \
      github.com/containernetworking/plugins/plugins/main/loopback@${CNI_PLUGINS_VERSION} \
      github.com/containernetworking/plugins/plugins/meta/portmap@${CNI_PLUGINS_VERSION}

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/bin/overlayd /usr/local/bin/overlayd
COPY --from=build /cni/ /opt/cni/bin/
# overlayd's rules must live in the same iptables variant (nft or legacy) as
# kube-proxy's and the policy engine's, or neither sees the other's. The
# entrypoint picks the variant the node uses, then runs overlayd.
COPY --chmod=0755 <<'EOF' /usr/local/bin/overlayd-entrypoint
#!/bin/sh
# IPTABLES_MODE=nft or IPTABLES_MODE=legacy skips the detection.
set -eu
mode=${IPTABLES_MODE:-}
if [ -z "$mode" ]; then
  # kubelet creates the chain KUBE-IPTABLES-HINT in the variant it uses.
  if iptables-nft-save -t mangle 2>/dev/null | grep -q '^:KUBE-IPTABLES-HINT '; then
    mode=nft
  elif iptables-legacy-save -t mangle 2>/dev/null | grep -q '^:KUBE-IPTABLES-HINT '; then
    mode=legacy
  else
    # Else the variant that holds more rules; nft on a tie.
    nft=$( (iptables-nft-save; ip6tables-nft-save) 2>/dev/null | grep -c '^-' || true)
    legacy=$( (iptables-legacy-save; ip6tables-legacy-save) 2>/dev/null | grep -c '^-' || true)
    if [ "$legacy" -gt "$nft" ]; then mode=legacy; else mode=nft; fi
  fi
fi
case "$mode" in
  nft|legacy) ;;
  *) echo "overlayd-entrypoint: IPTABLES_MODE=$mode: want nft or legacy" >&2; exit 2 ;;
esac
update-alternatives --quiet --set iptables "/usr/sbin/iptables-$mode"
update-alternatives --quiet --set ip6tables "/usr/sbin/ip6tables-$mode"
echo "overlayd-entrypoint: using iptables-$mode" >&2
exec /usr/local/bin/overlayd "$@"
EOF
ENTRYPOINT ["/usr/local/bin/overlayd-entrypoint"]
