#!/usr/bin/env bash
# Regenerates crates/rate/tests/fixtures/apimachinery-quantity-table.tsv:
# apimachinery's own ParseQuantity test table (TestQuantityParse in
# staging/src/k8s.io/apimachinery/pkg/api/resource/quantity_test.go of
# Kubernetes v1.20.2, Debian's `kubernetes` source package), evaluated by Go:
# each valid input with the table's expected canonical form and exact value
# and the Value() of what ParseQuantity returns for it,
# and each invalid input. The Rust test quantity_table (crates/rate) runs the
# project's strict parser against it.
#
# Usage: bash scripts/quantity-table.sh   (root; installs golang-go and dpkg-dev)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/kube-source.sh
source "$repo/scripts/lib/kube-source.sh"
src=$(kube_source)
pkg=$src/staging/src/k8s.io/apimachinery/pkg/api/resource
generated=$pkg/zz_podshaper_table_test.go
tool=$(mktemp /var/tmp/podshaper-extract-table.XXXXXX)
trap 'rm -f "$generated" "$tool"' EXIT
kube_go build -o "$tool" "$repo/scripts/quantity-oracle/extract-table/main.go"
"$tool" "$pkg/quantity_test.go" >"$generated"
out=$repo/crates/rate/tests/fixtures/apimachinery-quantity-table.tsv
mkdir -p "$(dirname "$out")"
{
  printf '# apimachinery v0.20.2 TestQuantityParse (quantity_test.go in Kubernetes v1.20.2, Debian source %s)\n' \
    "$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version)"
  printf '# regenerate: bash scripts/quantity-table.sh\n'
  printf '# valid<TAB>input hex<TAB>input quoted<TAB>expected String()<TAB>expected exact value<TAB>ParseQuantity(input).Value()\n'
  printf '# invalid<TAB>input hex<TAB>input quoted\n'
  (cd "$pkg" && kube_go test -count=1 -run '^TestPodshaperDumpQuantityTable$' -v .) |
    sed -n 's/^PODSHAPER\t//p'
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "quantity-table: $(grep -c '^valid' "$out") valid and $(grep -c '^invalid' "$out") invalid cases in ${out#"$repo"/}"
