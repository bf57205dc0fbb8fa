#!/usr/bin/env bash
# Fails unless every licence the repository declares has its full text:
# - each SPDX identifier in a `license = "..."` of a tracked Cargo.toml and
#   in an `SPDX-License-Identifier:` line of a tracked file has
#   LICENSES/<identifier>.txt (the layout of the REUSE specification);
# - the workspace's licence (Cargo.toml, [workspace.package]) is also the
#   root LICENSE, word for word;
# - every package's Cargo.toml declares a licence (its own, or the
#   workspace's with `license.workspace = true`);
# - every tracked BPF C file (bpf/*.c, bpf/**/*.h) starts with an
#   SPDX-License-Identifier line, and each `SEC("license")` string is one
#   the kernel takes as GPL-compatible, in a file whose SPDX expression
#   names a GPL.
#
#   bash scripts/check-licenses.sh     # prints each problem; exit 1 if any
set -euo pipefail

cd "$(dirname "$0")/.."

self=scripts/check-licenses.sh
problems=0
problem() {
  echo "check-licenses: $*" >&2
  problems=$((problems + 1))
}

# "(GPL-2.0-only OR BSD-2-Clause)" -> one identifier a line
identifiers() {
  tr '()' '  ' <<<"$1" | tr -s ' ' '\n' | grep -v -x -e '' -e OR -e AND -e WITH || true
}

declared=()
while IFS= read -r -d '' toml; do
  [ -f "$toml" ] || continue
  if grep -q '^\[package\]' "$toml" &&
    ! grep -q -E '^license(\.workspace)?[[:space:]]*=' "$toml"; then
    problem "$toml declares no licence (license = \"...\" or license.workspace = true)"
  fi
  while IFS= read -r expr; do
    declared+=("$toml: $expr")
  done < <(sed -n -E 's/^license[[:space:]]*=[[:space:]]*"([^"]*)".*/\1/p' "$toml")
done < <(git ls-files -z -- 'Cargo.toml' '*/Cargo.toml')

while IFS= read -r -d '' file; do
  [ "$file" = "$self" ] && continue
  [ -f "$file" ] || continue
  while IFS= read -r expr; do
    declared+=("$file: $expr")
  done < <(sed -n -E 's/.*SPDX-License-Identifier:[[:space:]]*([^*]*[^*[:space:]]).*/\1/p' "$file")
done < <(git grep -z -l 'SPDX-License-Identifier:' || true)

[ "${#declared[@]}" -gt 0 ] || problem "no licence is declared anywhere"
for entry in "${declared[@]}"; do
  where=${entry%%: *}
  for id in $(identifiers "${entry#*: }"); do
    [ -s "LICENSES/$id.txt" ] || problem "$where declares $id, but LICENSES/$id.txt is missing"
  done
done

workspace=$(sed -n '/^\[workspace.package\]/,/^\[/s/^license[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' Cargo.toml)
if [ -z "$workspace" ]; then
  problem "Cargo.toml's [workspace.package] declares no licence"
elif ! cmp -s LICENSE "LICENSES/$workspace.txt"; then
  problem "LICENSE is not LICENSES/$workspace.txt (the workspace's licence, $workspace)"
fi

while IFS= read -r -d '' file; do
  [ -f "$file" ] || continue
  head -n 1 "$file" | grep -q 'SPDX-License-Identifier:' ||
    problem "$file does not start with an SPDX-License-Identifier line"
  section=$(sed -n -E 's/.*SEC\("license"\)[[:space:]]*=[[:space:]]*"([^"]*)".*/\1/p' "$file")
  [ -n "$section" ] || continue
  # the strings include/linux/license.h accepts as GPL-compatible
  case "$section" in
    GPL | "GPL v2" | "GPL and additional rights" | "Dual BSD/GPL" | "Dual MIT/GPL" | "Dual MPL/GPL") ;;
    *) problem "$file: SEC(\"license\") \"$section\" is not GPL-compatible: the kernel refuses GPL-only helpers" ;;
  esac
  head -n 1 "$file" | grep -q 'GPL' ||
    problem "$file: SEC(\"license\") says \"$section\", but its SPDX line names no GPL"
done < <(git ls-files -z -- 'bpf/*.c' 'bpf/*.h')

if [ "$problems" -gt 0 ]; then
  echo "check-licenses: $problems problem(s)" >&2
  exit 1
fi
echo "check-licenses: ${#declared[@]} declarations, each licence with its text"
