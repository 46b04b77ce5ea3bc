#!/bin/sh
# Tender: restores files from a restore point onto this instance, as
# Systems Manager Run Command (AWS-RunShellScript, as root) runs it.
#
# The plan (fetched by a short-lived presigned URL and checked against its
# SHA-256) lists folders and files; every file is fetched the same way and
# written only once its size and SHA-256 match. Nothing is overwritten
# unless the plan says so: an existing file is kept and the restored one
# written beside it, named with the plan's suffix.
#
# Where anyone but root can change a folder on the way to a file (a home
# folder), the file is written by that folder's owner, with that user's
# rights only: a symbolic link planted there cannot send root's writes
# elsewhere. A file owned by someone else in such a folder is not written.
# A folder on the way that is a symbolic link or another mount is refused.
#
# Output (stdout): a line "TENDER-FILE <outcome> <index>" for each entry
# that was not simply restored (at most 400, then "TENDER-MORE <count>"),
# then "TENDER-RESULT restored=.. beside=.. overwritten=.. unchanged=..
# failed=..". Exit status 0 when nothing failed, 1 when something did, 3
# when the plan could not be carried out at all ("TENDER-ERROR <why>").
set -u
umask 077
REQUEST='@REQUEST@'
PLAN_URL='@PLAN_URL@'
PLAN_SHA256='@PLAN_SHA256@'

say() { printf '%s\n' "$*"; }
fail() { say "TENDER-ERROR $*"; exit 3; }

for tool in curl sha256sum base64 findmnt stat mktemp chown chgrp chmod touch ln mv mkdir setpriv wc cut id; do
  command -v "$tool" >/dev/null 2>&1 || fail "missing-tool $tool"
done

WORK=$(mktemp -d "/var/tmp/tender-$REQUEST.XXXXXX") || fail "no-temporary-folder"
trap 'rm -rf -- "$WORK"' EXIT
curl -fsS --retry 3 --max-time 300 -o "$WORK/plan" "$PLAN_URL" 2>"$WORK/curl" ||
  fail "plan-download $(head -c 300 "$WORK/curl" | tr '\n' ' ')"
[ "$(sha256sum <"$WORK/plan" | cut -d' ' -f1)" = "$PLAN_SHA256" ] || fail "plan-digest"

UUID= SUFFIX= OVERWRITE= RECORDS=
while read -r kind value rest; do
  case $kind in
    TENDER-PLAN) [ "$value" = 1 ] || fail "plan-version $value" ;;
    fs) UUID=$value ;;
    suffix) SUFFIX=$value ;;
    overwrite) OVERWRITE=$value ;;
    end) RECORDS=$value ;;
  esac
done <"$WORK/plan"
[ -n "$RECORDS" ] || fail "plan-truncated"
[ -n "$UUID" ] && [ -n "$SUFFIX" ] && [ -n "$OVERWRITE" ] || fail "plan-incomplete"

ROOT=$(findmnt -n -f -o TARGET -S "UUID=$UUID") || ROOT=
[ -n "$ROOT" ] && [ -d "$ROOT" ] || fail "not-mounted $UUID"
[ "$ROOT" = / ] && ROOT=
DEVICE=$(stat -c %d -- "$ROOT/") || fail "not-mounted $UUID"

# The work of placing one file, run as root or as the owner of its folder
# (a shell of its own: `setpriv` cannot run a function).
PLACE='
set -u
umask 077
dir=$1 name=$2 sha=$3 size=$4 mode=$5 uid=$6 gid=$7 mtime=$8 url=$9
shift 9
suffix=$1 overwrite=$2 as_root=$3
dest=$dir/$name
digest() { sha256sum <"$1" 2>/dev/null | cut -d" " -f1; }
regular() { [ -f "$1" ] && [ ! -L "$1" ]; }
# Restored before (a retry): nothing to do.
for c in "$dest" "$dest$suffix" "$dest$suffix-2" "$dest$suffix-3" "$dest$suffix-4" "$dest$suffix-5"; do
  if regular "$c" && [ "$(digest "$c")" = "$sha" ]; then echo unchanged; exit 0; fi
done
tmp=$(mktemp -p "$dir" ".tender-XXXXXXXX") || { echo failed-write; exit 0; }
if ! curl -fsS --retry 3 --max-time 3600 -o "$tmp" "$url" 2>/dev/null; then
  rm -f -- "$tmp"; echo failed-download; exit 0
fi
if [ "$(wc -c <"$tmp")" -ne "$size" ] || [ "$(digest "$tmp")" != "$sha" ]; then
  rm -f -- "$tmp"; echo failed-digest; exit 0
fi
if [ "$as_root" = 1 ]; then chown -h "$uid:$gid" "$tmp"; else chgrp -h "$gid" "$tmp" 2>/dev/null; fi
chmod "$mode" "$tmp"
touch -m -d "@$mtime" "$tmp"
if [ "$overwrite" = 1 ] && { regular "$dest" || { [ ! -e "$dest" ] && [ ! -L "$dest" ]; }; }; then
  existed=0; [ -e "$dest" ] && existed=1
  if mv -f -T -- "$tmp" "$dest"; then
    if [ $existed = 1 ]; then echo overwritten; else echo restored; fi
    exit 0
  fi
  rm -f -- "$tmp"; echo failed-write; exit 0
fi
# Never over anything: link(2) fails on any existing name (a symbolic
# link too); where hard links are not supported (FAT), a move that will
# not replace.
put() {
  if ln -- "$tmp" "$1" 2>/dev/null; then rm -f -- "$tmp"; return 0; fi
  [ -e "$1" ] || [ -L "$1" ] && return 1
  mv -n -T -- "$tmp" "$1" 2>/dev/null
  [ ! -e "$tmp" ]
}
if put "$dest"; then echo restored; exit 0; fi
for c in "$dest$suffix" "$dest$suffix-2" "$dest$suffix-3" "$dest$suffix-4" "$dest$suffix-5"; do
  if put "$c"; then echo beside; exit 0; fi
done
rm -f -- "$tmp"; echo failed-exists
'

# Whether folder $1 (under ROOT) is safe to reach: no symbolic link and no
# other mount on the way from ROOT. Sets TRUSTED=1 when only root can
# change any folder on the way (owned by root, writable by no one else
# unless sticky).
reach() {
  TRUSTED=1
  d=$1
  while :; do
    [ -L "$d" ] && return 1
    [ -d "$d/" ] || return 1
    info=$(stat -c '%d %u %a' -- "$d/") || return 1
    set -- $info
    [ "$1" = "$DEVICE" ] || return 1
    perm=$((0$3))
    if [ "$2" != 0 ] || { [ $((perm & 18)) != 0 ] && [ $((perm & 512)) = 0 ]; }; then
      TRUSTED=0
    fi
    [ "$d" = "$ROOT" ] && return 0
    d=${d%/*}
  done
}

restored=0 beside=0 overwritten=0 unchanged=0 failed=0 listed=0 more=0
note() {
  case $1 in
    restored) restored=$((restored + 1)); return ;;
    beside) beside=$((beside + 1)) ;;
    overwritten) overwritten=$((overwritten + 1)) ;;
    unchanged) unchanged=$((unchanged + 1)) ;;
    folder-exists) return ;;
    *) failed=$((failed + 1)) ;;
  esac
  if [ $listed -lt 400 ]; then
    say "TENDER-FILE $1 $2"
    listed=$((listed + 1))
  else
    more=$((more + 1))
  fi
}

# A path from the plan, decoded; refused when it is absolute or climbs.
decode() {
  P=$(printf %s "$1" | base64 -d 2>/dev/null; echo x) || return 1
  P=${P%x}
  case "/$P/" in
    *//* | */../* | */./*) return 1 ;;
  esac
  [ -n "$P" ]
}

# Runs PLACE (or any shell text) as root, or as the owner of folder $1.
run_in() {
  folder=$1 text=$2
  shift 2
  if [ "$TRUSTED" = 1 ]; then
    sh -c "$text" sh "$@" </dev/null
  else
    owner=$(stat -c %u -- "$folder/")
    group=$(id -g -- "$owner" 2>/dev/null) || group=$(stat -c %g -- "$folder/")
    setpriv --reuid="$owner" --regid="$group" --clear-groups sh -c "$text" sh "$@" </dev/null
  fi
}

MAKE_FOLDER='
set -u
mkdir -m 700 -- "$1" 2>/dev/null || { echo failed-write; exit 0; }
if [ "$5" = 1 ]; then chown -h "$3:$4" "$1"; else chgrp -h "$4" "$1" 2>/dev/null; fi
chmod "$2" "$1"
echo made
'

: >"$WORK/made"
while read -r kind index f1 f2 f3 f4 f5 f6 f7 f8; do
  case $kind in
    d)
      # d <index> <mode> <uid> <gid> <mtime> <path>
      decode "$f5" || { note refused-path "$index"; continue; }
      target=$ROOT/$P
      if [ -e "$target" ] || [ -L "$target" ]; then
        if [ -d "$target" ] && [ ! -L "$target" ]; then note folder-exists "$index"; else note failed-not-a-folder "$index"; fi
        continue
      fi
      parent=${target%/*}
      reach "$parent" || { note refused-link-or-mount "$index"; continue; }
      if [ "$TRUSTED" = 0 ] && [ "$(stat -c %u -- "$parent/")" != "$f2" ]; then
        note refused-another-users-folder "$index"; continue
      fi
      made=$(run_in "$parent" "$MAKE_FOLDER" "$target" "$f1" "$f2" "$f3" "$TRUSTED")
      [ "$made" = made ] || { note failed-write "$index"; continue; }
      printf '%s %s %s\n' "$TRUSTED" "$f4" "$f5" >>"$WORK/made"
      ;;
    f)
      # f <index> <sha256> <size> <mode> <uid> <gid> <mtime> <url> <path>
      decode "$f8" || { note refused-path "$index"; continue; }
      target=$ROOT/$P
      parent=${target%/*}
      name=${target##*/}
      [ -d "$parent" ] || { note failed-no-folder "$index"; continue; }
      reach "$parent" || { note refused-link-or-mount "$index"; continue; }
      if [ "$TRUSTED" = 0 ] && [ "$(stat -c %u -- "$parent/")" != "$f4" ]; then
        note refused-another-users-folder "$index"; continue
      fi
      outcome=$(run_in "$parent" "$PLACE" "$parent" "$name" "$f1" "$f2" "$f3" "$f4" "$f5" "$f6" "$f7" "$SUFFIX" "$OVERWRITE" "$TRUSTED")
      note "${outcome:-failed-write}" "$index"
      ;;
  esac
done <"$WORK/plan"

# Folders made get their times last (writing into them changed them).
while read -r trusted mtime path; do
  decode "$path" || continue
  TRUSTED=$trusted
  run_in "$ROOT/$P" 'touch -m -d "@$1" "$2"' "$mtime" "$ROOT/$P" 2>/dev/null
done <"$WORK/made"

[ $more -gt 0 ] && say "TENDER-MORE $more"
say "TENDER-RESULT restored=$restored beside=$beside overwritten=$overwritten unchanged=$unchanged failed=$failed"
[ $failed = 0 ] || exit 1
exit 0
