#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 60s):
# `make fuzz`, and briefly in `make test` (FUZZTIME=5s). A failing input is
# written under the package's testdata/fuzz/, where `go test` keeps running
# it as a seed: commit it with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-60s}
go=${GO:-go}
# package -> its fuzz targets, found by name so a new target is never missed.
for pkg in $(git grep -l '^func Fuzz' -- '*_test.go' | xargs -n1 dirname | sort -u); do
  for target in $(grep -h '^func Fuzz' "$pkg"/*_test.go | sed 's/^func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do
    echo "fuzz: $pkg $target for $fuzztime"
    "$go" test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "./$pkg"
  done
done
