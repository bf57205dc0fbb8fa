#!/usr/bin/env bash
# Checks that the BPF C (bpf/*.c, bpf/*.h, bpf/lib/*.h) is formatted as the
# repository's .clang-format says. Exits 1 and shows what clang-format would
# change if it is not (fix with `clang-format -i` on the files named), 2 if
# clang-format is missing (Debian: apt-get install clang-format).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v clang-format >/dev/null; then
	echo "check-bpf-format: clang-format is missing (Debian: apt-get install clang-format)" >&2
	exit 2
fi
shopt -s nullglob
files=(bpf/*.c bpf/*.h bpf/lib/*.h)
if ! clang-format --dry-run --Werror "${files[@]}"; then
	echo "check-bpf-format: run clang-format -i on the files above" >&2
	exit 1
fi
echo "check-bpf-format: ${#files[@]} files formatted"
