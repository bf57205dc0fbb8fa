#!/usr/bin/env bash
# Shows that the BPF shaper's programs are the same at BASE_REF and in the
# work tree: compiles bpf/shaper.c of both with the flags crates/shaper/build.rs
# passes clang, and compares, section by section, the instructions
# (`llvm-objdump -d -r`: each instruction, and the map or symbol it is
# relocated against), the BTF of every map, program and type (`bpftool btf
# dump`, type ids resolved, so only what the types are counts, not the order
# clang numbered them in), where each map sits in .maps (the symbol table),
# and the data sections (.rodata, license).
# Line numbers and file names (debug info) are not compared: a change that
# only moves code between files or reformats it leaves everything above
# alone. The kernel's program tag is a hash of the instructions, so the same
# instructions also keep the tags a running daemon compares on upgrade.
#
# Usage: scripts/bpf-same.sh BASE_REF     (e.g. main, HEAD~1)
# Exits 0 if all is the same, 1 if anything differs (the diff is printed),
# 2 if it cannot compare. Needs clang, llvm (llvm-objdump) and bpftool
# (Debian: apt-get install clang llvm bpftool).
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 BASE_REF" >&2
	exit 2
fi
base_ref=$1
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
for tool in clang llvm-objdump bpftool; do
	if ! command -v "$tool" >/dev/null; then
		echo "bpf-same: $tool is missing (Debian: apt-get install clang llvm bpftool)" >&2
		exit 2
	fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# build.rs: clang -g -O2 -target bpf -mcpu=v3 -Wall -Werror
#   -I/usr/include/<arch>-linux-gnu -I<bpf dir> -c shaper.c -o shaper.o
compile() {
	local bpf_dir=$1 out=$2
	clang -g -O2 -target bpf -mcpu=v3 -Wall -Werror \
		"-I/usr/include/$(uname -m)-linux-gnu" "-I$bpf_dir" \
		-c "$bpf_dir/shaper.c" -o "$out"
}

mkdir -p "$work/base"
if ! git -C "$root" archive "$base_ref" bpf | tar -x -C "$work/base"; then
	echo "bpf-same: cannot read bpf/ at $base_ref" >&2
	exit 2
fi
compile "$work/base/bpf" "$work/base.o" || {
	echo "bpf-same: bpf/shaper.c at $base_ref does not compile" >&2
	exit 2
}
compile "$root/bpf" "$work/tree.o" || {
	echo "bpf-same: bpf/shaper.c in the work tree does not compile" >&2
	exit 2
}

# The sections that hold code (programs, and .text for functions not inlined).
code_sections() {
	llvm-objdump -h "$1" | awk '$NF == "TEXT" { print $2 }'
}

# One section's instructions, without the file name line.
disassemble() {
	llvm-objdump -d -r --no-show-raw-insn "--section=$2" "$1" | sed 1,2d
}

# The object's BTF with every type reference written out: named types by
# kind and name, anonymous ones by what they are. One line per named type,
# variable, function and data section, sorted.
btf_types() {
	bpftool btf dump file "$1" format raw | awk '
		/^\[[0-9]+\] / {
			id = substr($1, 2, length($1) - 2)
			head[id] = substr($0, length($1) + 2)
			body[id] = ""
			kind[id] = $2
			name[id] = $3
			last = id
			if (id + 0 > max)
				max = id + 0
			next
		}
		{ body[last] = body[last] " |" $0 }
		function ref(id) {
			if (id == 0)
				return "void"
			if (name[id] != "\x27(anon)\x27")
				return kind[id] " " name[id]
			return "{" expand(id) "}"
		}
		function expand(id,    text, out, at, len) {
			text = head[id] body[id]
			out = ""
			while (match(text, /type_id=[0-9]+/)) {
				# ref() matches too: RSTART and RLENGTH are global
				at = RSTART
				len = RLENGTH
				out = out substr(text, 1, at - 1) "type="
				out = out ref(substr(text, at + 8, len - 8) + 0)
				text = substr(text, at + len)
			}
			return out text
		}
		END {
			for (id = 1; id <= max; id++) {
				if (name[id] == "\x27(anon)\x27")
					continue
				if (kind[id] != "DATASEC") {
					print expand(id)
					continue
				}
				# a section: one line per variable in it, by name (the
				# order is the order clang met them in; the symbol
				# table below has where each is)
				n = split(expand(id), part, " [|]")
				for (i = 2; i <= n; i++)
					print "DATASEC " name[id] " holds" part[i]
			}
		}' | tr -s '\t' ' ' | sort
}

# Where each map and global variable sits in its section, and its size.
data_symbols() {
	llvm-objdump -t "$1" | awk 'NF >= 4 && $(NF - 2) ~ /^(\.maps|\.rodata|license)$/ { print $(NF - 2), $1, $(NF - 1), $NF }' | sort
}

data_sections() {
	llvm-objdump -s -j .rodata -j license "$1" | sed 1,2d
}

status=0
base_sections=$(code_sections "$work/base.o")
tree_sections=$(code_sections "$work/tree.o")
if [ "$base_sections" != "$tree_sections" ]; then
	echo "DIFFERENT: the code sections"
	diff <(echo "$base_sections") <(echo "$tree_sections") || true
	status=1
fi
for section in $tree_sections; do
	if ! grep -qxF "$section" <<<"$base_sections"; then
		continue
	fi
	disassemble "$work/base.o" "$section" >"$work/base.s"
	disassemble "$work/tree.o" "$section" >"$work/tree.s"
	instructions=$(grep -cE '^ +[0-9]+:' "$work/tree.s" || true)
	if diff -u "$work/base.s" "$work/tree.s" >"$work/diff"; then
		echo "identical: $section ($instructions instructions)"
	else
		echo "DIFFERENT: $section"
		cat "$work/diff"
		status=1
	fi
done

btf_types "$work/base.o" >"$work/base.btf"
btf_types "$work/tree.o" >"$work/tree.btf"
if diff -u "$work/base.btf" "$work/tree.btf" >"$work/diff"; then
	echo "identical: BTF ($(wc -l <"$work/tree.btf") named types, variables, functions and sections, maps included)"
else
	echo "DIFFERENT: BTF"
	cat "$work/diff"
	status=1
fi

if diff -u <(data_symbols "$work/base.o") <(data_symbols "$work/tree.o") >"$work/diff"; then
	echo "identical: maps' and globals' places and sizes ($(data_symbols "$work/tree.o" | wc -l) symbols)"
else
	echo "DIFFERENT: maps' or globals' places or sizes"
	cat "$work/diff"
	status=1
fi

if diff -u <(data_sections "$work/base.o") <(data_sections "$work/tree.o") >"$work/diff"; then
	echo "identical: .rodata and license"
else
	echo "DIFFERENT: .rodata or license"
	cat "$work/diff"
	status=1
fi

if [ "$status" -eq 0 ]; then
	echo "bpf-same: bpf/shaper.c at $base_ref and in the work tree compile to the same programs"
else
	echo "bpf-same: bpf/shaper.c at $base_ref and in the work tree differ (above)"
fi
exit "$status"
