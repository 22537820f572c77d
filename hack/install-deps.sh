#!/usr/bin/env bash
# Installs the system packages tests, demos and benchmarks need, only those
# missing. Idempotent; needs root (tests need root anyway).
set -euo pipefail

# command -> Debian package
declare -A pkgs=(
  [ip]=iproute2
  [iptables]=iptables
  [ping]=iputils-ping
  [iperf3]=iperf3
  [nft]=nftables
  [ipset]=ipset # kube-router, the policy engine of test/e2e/policy_engine_test.go
)
missing=()
for cmd in "${!pkgs[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkgs[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "missing packages: ${missing[*]}; run as root or install them" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
