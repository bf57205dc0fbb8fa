#!/usr/bin/env bash
# Fails if a tracked file speaks of how or when the project was built rather
# than of what it is: the word "session" (with a number after it, or "this"
# or "last" before it) or a work date of the form YYYY-MM-DD. Docs and
# comments say what the code does and why, in the present tense; how a
# design came to be goes in docs/decisions/ and in the git history.
#
#   bash scripts/check-words.sh     # prints file:line:text of each hit; exit 1 if any
#
# Not checked:
# - docs/decisions/: decision records tell what was tried and when it was
#   rejected, and may say so.
# - this script, which names the words it looks for.
# No file holds "session" in a technical sense (a TLS or TCP session, a
# process session from setsid) or a date that is not one of work (a lock
# file, a test fixture); were one needed, exclude it here by path, with the
# reason, rather than widening the patterns.
set -euo pipefail

cd "$(dirname "$0")/.."

self=scripts/check-words.sh
# "session" or "sessions" as a word, in any case: every form of work history
# (the word with a number, "this" or "last" before it, "until" and a
# number) contains it.
session='\bsessions?\b'
# a date of the form YYYY-MM-DD in this century and the next
date='\b20[0-9]{2}-[01][0-9]-[0-3][0-9]\b'

files=()
while IFS= read -r -d '' file; do
  case "$file" in
    docs/decisions/* | "$self") continue ;;
  esac
  # a tracked file deleted in the work tree is not there to read
  [ -f "$file" ] || continue
  files+=("$file")
done < <(git ls-files -z)

[ "${#files[@]}" -gt 0 ] || exit 0

# -I skips binary files (images); -H and -n give file:line. grep exits 0
# when it found something, 1 when not, 2 on an error.
status=0
grep -HnIiE -e "$session" -e "$date" -- "${files[@]}" || status=$?
case "$status" in
  0)
    echo >&2
    echo "check-words: work history above (session words or work dates): say what is, in the present tense, or move it to docs/decisions/" >&2
    exit 1
    ;;
  1) exit 0 ;;
  *)
    echo "check-words: grep failed ($status)" >&2
    exit 2
    ;;
esac
