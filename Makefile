# overlayd — see README.md. Tests, demos and benchmarks need root.

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/overlayd/overlayd/pkg/version.Version=$(VERSION)
TOOLS_BIN := $(CURDIR)/hack/tools/bin
K8S_BINS  := kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl
TEST_BINS := $(TOOLS_BIN)/etcd $(addprefix $(TOOLS_BIN)/,$(K8S_BINS)) $(TOOLS_BIN)/flanneld $(TOOLS_BIN)/kube-router
# containerd, runc and the Debian parts of the test images (hack/install-node-deps.sh)
NODE_DEPS := $(TOOLS_BIN)/node
HELM      := $(TOOLS_BIN)/helm
HELM_VERSION := $(shell awk '$$1=="helm.sh/helm/v3" {print $$2}' hack/tools/helm/go.mod)
# The Kubernetes version helm assumes without a cluster (helm template, lint): its client-go's,
# as Helm's own Makefile sets it.
HELM_K8S_MINOR := $(shell awk '$$1=="k8s.io/client-go" {split($$2, v, "."); print v[2]}' hack/tools/helm/go.mod)
HELM_LDFLAGS := -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
  $(foreach p,lint/rules chartutil,-X helm.sh/helm/v3/pkg/$(p).k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/$(p).k8sVersionMinor=$(HELM_K8S_MINOR))
K8S_VERSION := $(shell awk '$$1=="k8s.io/kubernetes" {print $$2}' hack/tools/go.mod)
FLANNEL_VERSION := $(shell awk '$$1=="github.com/flannel-io/flannel" {print $$2}' hack/tools/flannel/go.mod)
KUBE_ROUTER_VERSION := $(shell awk '$$1=="github.com/cloudnativelabs/kube-router/v2" {print $$2}' hack/tools/kube-router/go.mod)
# One package at a time: the end-to-end, demo and benchmark-like tests measure
# packet loss and must not compete for the CPU with each other.
TEST_FLAGS ?= -count=1 -p 1 -timeout 30m

export OVERLAYD_TEST_BIN_DIR := $(TOOLS_BIN)
export PATH := $(PATH):/usr/sbin:/sbin

.PHONY: all build test test-wgkernel fuzz deps test-bins cni-bins flannel-bin policy-engine-bin node-deps helm-bin manifests lint bench demo clean

all: build

## build: bin/overlayd
build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/overlayd ./cmd/overlayd

## deps: system packages the tests use (apt, only what is missing)
deps:
	@hack/install-deps.sh

## test-bins: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kubectl
##            pinned in hack/tools, flanneld pinned in hack/tools/flannel and kube-router pinned
##            in hack/tools/kube-router
test-bins: $(TEST_BINS)

$(TOOLS_BIN)/etcd: hack/tools/go.mod hack/tools/go.sum
	cd hack/tools && $(GO) build -trimpath -o $@ go.etcd.io/etcd/server/v3

$(addprefix $(TOOLS_BIN)/,$(K8S_BINS)): $(TOOLS_BIN)/%: hack/tools/go.mod hack/tools/go.sum
	cd hack/tools && $(GO) build -trimpath -ldflags "-X k8s.io/component-base/version.gitVersion=$(K8S_VERSION)" -o $@ k8s.io/kubernetes/cmd/$*

## flannel-bin: the real flanneld (flannel-io/flannel, version in hack/tools/flannel/go.mod),
##              for the mixed-cluster and subnet.env tests (test/e2e/flannel_test.go)
flannel-bin: $(TOOLS_BIN)/flanneld

# cgo stays on: flanneld's udp backend is partly C.
$(TOOLS_BIN)/flanneld: hack/tools/flannel/go.mod hack/tools/flannel/go.sum hack/tools/flannel/tencentvpc-stub/go.mod $(wildcard hack/tools/flannel/tencentvpc-stub/*/*.go)
	cd hack/tools/flannel && $(GO) build -trimpath -ldflags "-X github.com/flannel-io/flannel/pkg/version.Version=$(FLANNEL_VERSION)" -o $@ github.com/flannel-io/flannel

## policy-engine-bin: a real NetworkPolicy engine, kube-router's network policy controller
##                    (version in hack/tools/kube-router/go.mod), for the Canal-style pairing
##                    tests (test/e2e/policy_engine_test.go); a test binary only, never shipped
policy-engine-bin: $(TOOLS_BIN)/kube-router

# A test binary run inside the lab's node namespaces only; why this engine and version (the
# module proxy's advisory about v2.1.0) is in hack/tools/kube-router/go.mod.
$(TOOLS_BIN)/kube-router: hack/tools/kube-router/go.mod hack/tools/kube-router/go.sum
	cd hack/tools/kube-router && $(GO) build -trimpath -ldflags "-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$(KUBE_ROUTER_VERSION)" -o $@ github.com/cloudnativelabs/kube-router/v2/cmd/kube-router

CNI_BIN     := $(TOOLS_BIN)/cni
CNI_PLUGINS := bridge host-local loopback flannel portmap
CNI_BINS    := $(addprefix $(CNI_BIN)/,$(CNI_PLUGINS))
# where each plugin lives in github.com/containernetworking/plugins/plugins
CNI_PKG_bridge     := main/bridge
CNI_PKG_loopback   := main/loopback
CNI_PKG_host-local := ipam/host-local
CNI_PKG_flannel    := meta/flannel
CNI_PKG_portmap    := meta/portmap

## cni-bins: the real CNI plugins (containernetworking/plugins v0.9.1) pinned in hack/tools/cni
cni-bins: $(CNI_BINS)

$(CNI_BINS): $(CNI_BIN)/%: hack/tools/cni/go.mod hack/tools/cni/go.sum
	cd hack/tools/cni && $(GO) build -trimpath -o $@ github.com/containernetworking/plugins/plugins/$(CNI_PKG_$*)

## node-deps: containerd, runc, the Debian packages of the test images (Dockerfile's runtime
##            stage, busybox-static) and the pause image's binary, for the real kubelet nodes of
##            test/nodes (hack/install-node-deps.sh: apt-get download + dpkg -x, nothing installed)
node-deps: $(NODE_DEPS)/packages.txt $(NODE_DEPS)/pause

$(NODE_DEPS)/packages.txt: hack/install-node-deps.sh
	hack/install-node-deps.sh $(NODE_DEPS)

# Kubernetes' own pause (build/pause of the pinned k8s.io/kubernetes), built as its Makefile does.
PAUSE_VERSION := 3.10.2
$(NODE_DEPS)/pause: hack/tools/go.mod $(NODE_DEPS)/packages.txt
	gcc -Os -Wall -Werror -static -DVERSION=v$(PAUSE_VERSION)-$(K8S_VERSION) -o $@ \
	  "$$(cd hack/tools && $(GO) list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"

## helm-bin: the real Helm (helm.sh/helm/v3, version in hack/tools/helm/go.mod)
helm-bin: $(HELM)

$(HELM): hack/tools/helm/go.mod hack/tools/helm/go.sum
	cd hack/tools/helm && $(GO) build -trimpath -ldflags "$(HELM_LDFLAGS)" -o $@ helm.sh/helm/v3/cmd/helm

CHART := Documentation/chart/overlayd

## manifests: Documentation/kube-overlayd.yml and Documentation/canal/calico-policy-only.yml
##            rendered from the Helm chart (test/chart fails when they differ)
manifests: $(HELM)
	hack/render-manifests.sh $(HELM) $(CHART)

## lint: go vet, and fail on unformatted code
lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^hack/tools/')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## test: everything — unit, integration (real apiserver), end-to-end (netns),
##       and every fuzz target briefly
test: deps test-bins cni-bins node-deps helm-bin lint build
	$(GO) test $(TEST_FLAGS) ./...
	FUZZTIME=$(TEST_FUZZTIME) GO=$(GO) hack/fuzz.sh

## test-wgkernel: the wireguard backend's kernel datapath; fails, saying so, on a kernel without
##       WireGuard (not part of `make test`, which cannot assume the module)
test-wgkernel:
	$(GO) test -count=1 -tags wgkernel -run TestKernelDatapath -v ./backend/wireguard

## fuzz: every fuzz target for FUZZTIME (default 60s) each
FUZZTIME ?= 60s
TEST_FUZZTIME ?= 5s
fuzz:
	FUZZTIME=$(FUZZTIME) GO=$(GO) hack/fuzz.sh

## bench: prints figures, never fails on a time (hack/bench): pod-to-pod
## throughput of vxlan, host-gw and udp on the real daemon, the lease store at
## 5000 nodes, agent convergence at 1000 and 5000 peers, IPv4-only and
## dual-stack side by side, the API server's cost of a Node update per agent in
## podCIDR and Lease mode, the agent's CPU for one changed peer at 1000, 5000 and
## 10 000 peers. BENCH_FLAGS passes options, e.g.
## BENCH_FLAGS="-only throughput -rounds 3" or "-only convergence -peers 5000"
## (go run ./hack/bench -h).
BENCH_FLAGS ?=
bench: build test-bins cni-bins deps
	$(GO) run ./hack/bench -overlayd $(CURDIR)/bin/overlayd $(BENCH_FLAGS)

DOCKER       ?= docker
KIND         ?= kind
KUBECTL      ?= kubectl
IMAGE        ?= ghcr.io/overlayd/overlayd:$(VERSION)
KIND_CLUSTER ?= overlayd
KIND_OVERLAY ?= hack/kind
# The image hack/kind's kustomizations deploy (test/manifests checks it is overlayd:dev).
KIND_IMAGE   := overlayd:dev

.PHONY: image kind-up kind-down dev-cluster dev-cluster-down

## image: the container image $(IMAGE) (Dockerfile; needs docker)
image:
	$(DOCKER) build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

## kind-up: a kind cluster running overlayd built from this tree (needs docker, kind, kubectl;
##          KIND_OVERLAY=hack/kind/canal adds Calico for NetworkPolicy)
kind-up:
	$(MAKE) image IMAGE=$(KIND_IMAGE)
	KIND=$(KIND) KUBECTL=$(KUBECTL) hack/kind/up.sh $(KIND_CLUSTER) $(KIND_IMAGE) $(KIND_OVERLAY)

## kind-down: delete the kind cluster
kind-down:
	$(KIND) delete cluster --name $(KIND_CLUSTER)

DEV_CLUSTER_DIR   ?= $(CURDIR)/.cache/dev-cluster
DEV_CLUSTER_NODES ?= 3
DEV_CLUSTER_BIN   := bin/overlayd-dev-cluster

## dev-cluster: a local cluster without a container engine (where kind cannot run): the real
##              control plane and $(DEV_CLUSTER_NODES) kubelet + containerd nodes of test/nodes, the
##              overlayd image built from this tree in every node; prints a kubeconfig and leaves
##              it running (needs root; Documentation/kubernetes.md)
dev-cluster: build test-bins cni-bins node-deps helm-bin
	$(GO) build -trimpath -o $(DEV_CLUSTER_BIN) ./hack/dev-cluster
	hack/dev-cluster.sh up $(DEV_CLUSTER_BIN) $(DEV_CLUSTER_DIR) $(DEV_CLUSTER_NODES)

## dev-cluster-down: stop the dev cluster and remove everything it made
dev-cluster-down:
	$(GO) build -trimpath -o $(DEV_CLUSTER_BIN) ./hack/dev-cluster
	hack/dev-cluster.sh down $(DEV_CLUSTER_BIN) $(DEV_CLUSTER_DIR)

BACKEND ?= vxlan
FAMILY  ?= ipv4

## demo: a local cluster without containers: real control plane, 3 nodes x 2 pods as network
##       namespaces, overlayd on every node; prints leases and a connectivity matrix (one per
##       address family), removes everything on exit (BACKEND=vxlan|host-gw|udp;
##       FAMILY=ipv4|dual|ipv6: IPv4, dual-stack or IPv6-only, udp only ipv4; DEMO_HOLD=0|1;
##       needs root)
demo: build test-bins cni-bins deps
	$(GO) build -trimpath -o bin/overlayd-demo ./hack/demo
	bin/overlayd-demo --backend=$(BACKEND) --family=$(FAMILY) --overlayd=bin/overlayd

clean:
	rm -rf bin
