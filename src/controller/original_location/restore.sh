#!/bin/sh
# Tender: restores files from a restore point onto this instance, as
# Systems Manager Run Command (AWS-RunShellScript, as root) runs it.
#
# The plan (fetched by a short-lived presigned URL and checked against its
# SHA-256) lists folders and files; every file is fetched the same way,
# into a private folder, and put in place only once its size and SHA-256
# match. Nothing is overwritten unless the plan says so: an existing file
# is kept and the restored one written beside it, named with the plan's
# suffix and "~" (without set-user-ID or set-group-ID bits). The
# filesystem is found by its UUID, and must be on the EBS volume the plan
# names. URLs never appear on a command line here (other users can read
# those); the plan's own URL is in the command Run Command keeps, so it
# lives only as long as delivering the command may take.
#
# Who writes: every folder on the way from the filesystem's root to a
# file's folder is checked once, before anything is written there. A
# symbolic link, another mount, or a folder that anyone but its owner may
# change (group- or world-writable and not sticky) refuses the file. When
# every folder on the way is root's, root writes; when the nearest ones
# belong to one user (a home folder), that user writes (`setpriv`), with
# that user's rights only, and only files that user owns.
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

for tool in curl sha256sum base64 findmnt lsblk tr stat mktemp chown chmod touch ln mv mkdir rm setpriv timeout cut id grep tail; do
  command -v "$tool" >/dev/null 2>&1 || fail "missing-tool $tool"
done

WORK=$(mktemp -d "/var/tmp/tender-$REQUEST.XXXXXX") || fail "no-temporary-folder"
trap 'rm -rf -- "$WORK"' EXIT
trap 'rm -rf -- "$WORK"; exit 4' INT TERM HUP
printf 'url = "%s"\n' "$PLAN_URL" |
  curl -q -fsS --retry 3 --max-time 300 -o "$WORK/plan" -K - 2>"$WORK/curl" ||
  fail "plan-download $(head -c 300 "$WORK/curl" | tr '\n' ' ')"
[ "$(sha256sum <"$WORK/plan" | cut -d' ' -f1)" = "$PLAN_SHA256" ] || fail "plan-digest"

UUID= VOLUME= SUFFIX= OVERWRITE= RECORDS=
while read -r kind value rest; do
  case $kind in
    TENDER-PLAN) [ "$value" = 1 ] || fail "plan-version $value" ;;
    fs) UUID=$value ;;
    volume) VOLUME=$value ;;
    suffix) SUFFIX=$value ;;
    overwrite) OVERWRITE=$value ;;
    end) RECORDS=$value ;;
  esac
done <"$WORK/plan"
[ -n "$RECORDS" ] || fail "plan-truncated"
[ -n "$UUID" ] && [ -n "$VOLUME" ] && [ -n "$SUFFIX" ] && [ -n "$OVERWRITE" ] || fail "plan-incomplete"

# Where the filesystem itself is mounted (not a bind mount of a folder of
# it): the first mount whose root is the filesystem's.
findmnt -rn -o TARGET,FSROOT,SOURCE -S "UUID=$UUID" >"$WORK/mounts" 2>/dev/null
ROOT= SOURCE=
while read -r target fsroot source; do
  case $target in *\\*) continue ;; esac
  [ "$fsroot" = / ] && { ROOT=$target SOURCE=$source; break; }
done <"$WORK/mounts"
[ -n "$ROOT" ] && [ -d "$ROOT" ] || fail "not-mounted $UUID"
# On the volume the restore point was taken of, not on another that
# carries the same UUID: EBS names the volume in the NVMe disk's serial
# (vol0123..., without the dash).
DISK=$(lsblk -ndo PKNAME -- "$SOURCE" 2>/dev/null)
[ -n "$DISK" ] || DISK=${SOURCE##*/}
SERIAL=$(lsblk -ndo SERIAL -- "/dev/$DISK" 2>/dev/null | tr -d ' ')
[ "$SERIAL" = "$(printf %s "$VOLUME" | tr -d -)" ] ||
  fail "not-the-volume $VOLUME: $UUID is mounted from $SOURCE (serial ${SERIAL:-none})"
[ "$ROOT" = / ] && ROOT=
DEVICE=$(stat -c %d -- "$ROOT/") || fail "not-mounted $UUID"

# The work of placing one file, run as root or as the owner of its folder
# (a shell of its own: `setpriv` cannot run a function).
PLACE='
set -u
umask 077
dir=$1 name=$2 sha=$3 size=$4 mode=$5 uid=$6 gid=$7 mtime=$8
suffix=$9
shift 9
overwrite=$1 as_root=$2
read -r url
dest=$dir/$name
same() {
  [ -f "$1" ] && [ ! -L "$1" ] && [ "$(stat -c %s -- "$1")" = "$size" ] &&
    [ "$(timeout 300 sha256sum <"$1" 2>/dev/null | cut -d" " -f1)" = "$sha" ]
}
# Restored before (a retry): nothing to do. When overwriting, only the
# name itself counts.
if [ "$overwrite" = 1 ]; then
  same "$dest" && { echo unchanged; exit 0; }
else
  for c in "$dest" "$dest$suffix~" "$dest$suffix-2~" "$dest$suffix-3~" "$dest$suffix-4~" "$dest$suffix-5~"; do
    same "$c" && { echo unchanged; exit 0; }
  done
fi
# Room for it, leaving a twentieth of the filesystem free.
set -- $(stat -f -c "%a %b %S" -- "$dir" 2>/dev/null) ||
  { echo failed-write; exit 0; }
[ $# = 3 ] && [ "$size" -le $(( ($1 - $2 / 20) * $3 )) ] ||
  { echo failed-no-space; exit 0; }
# A private folder beside the file (same filesystem), its own: nobody
# else can rename or replace what is in it.
work=$(mktemp -d -p "$dir" ".tender-XXXXXXXX") || { echo failed-write; exit 0; }
trap "rm -rf -- \"\$work\"" EXIT
cd "$work" || { echo failed-write; exit 0; }
printf "url = \"%s\"\n" "$url" | curl -q -fsS --retry 3 --max-time 3600 -o f -K - 2>/dev/null ||
  { echo failed-download; exit 0; }
if [ "$(stat -c %s f)" != "$size" ] || [ "$(sha256sum <f | cut -d" " -f1)" != "$sha" ]; then
  echo failed-digest; exit 0
fi
if [ "$as_root" = 1 ]; then chown -h -- "+$uid:+$gid" f; else chgrp -h -- "+$gid" f; fi ||
  { echo failed-owner; exit 0; }
{ chmod -- "$mode" f && touch -m -d "@$mtime" f; } || { echo failed-owner; exit 0; }
regular_or_none() { { [ -f "$1" ] || [ ! -e "$1" ]; } && [ ! -L "$1" ]; }
if [ "$overwrite" = 1 ] && regular_or_none "$dest"; then
  existed=0; [ -e "$dest" ] && existed=1
  mv -f -T -- f "$dest" || { echo failed-write; exit 0; }
  if [ $existed = 1 ]; then echo overwritten; else echo restored; fi
  exit 0
fi
# Never over anything: link(2) fails on any existing name (a symbolic
# link too); where hard links are not supported (FAT), a move that will
# not replace.
put() {
  ln -- f "$1" 2>/dev/null && return 0
  { [ -e "$1" ] || [ -L "$1" ]; } && return 1
  mv -n -T -- f "$1" 2>/dev/null
  [ ! -e f ]
}
if put "$dest"; then echo restored; exit 0; fi
# Beside a kept file: no set-user-ID or set-group-ID bits, and a name
# ending in "~", which the loaders of *.d folders (cron, logrotate,
# systemd, sshd) skip.
chmod ug-s f || { echo failed-owner; exit 0; }
for c in "$dest$suffix~" "$dest$suffix-2~" "$dest$suffix-3~" "$dest$suffix-4~" "$dest$suffix-5~"; do
  if put "$c"; then echo beside; exit 0; fi
done
echo failed-exists
'

# Whether folder $1 (under ROOT) may be written to, and by whom: no
# symbolic link and no other mount on the way from ROOT, no folder that
# anyone but its owner may change, and every folder root's or the nearest
# one's owner's. Sets RUN_AS (that owner, or 0) and RUN_GROUP once: what
# runs in the folder never looks its owner up again.
reach() {
  RUN_AS= d=$1
  while :; do
    [ -L "$d" ] && return 1
    [ -d "$d/" ] || return 1
    info=$(stat -c '%d %u %a' -- "$d/") || return 1
    set -- $info
    [ "$1" = "$DEVICE" ] || return 1
    perm=$((0$3))
    [ $((perm & 18)) != 0 ] && [ $((perm & 512)) = 0 ] && return 1
    [ -n "$RUN_AS" ] || RUN_AS=$2
    [ "$2" = 0 ] || [ "$2" = "$RUN_AS" ] || return 1
    [ "$d" = "$ROOT" ] && break
    d=${d%/*}
  done
  RUN_GROUP=0
  [ "$RUN_AS" = 0 ] || RUN_GROUP=$(id -g -- "$RUN_AS" 2>/dev/null) || return 2
}

# Notes why `reach` (status $1) refused entry $2.
refused() {
  case $1 in
    2) note refused-unknown-user "$2" ;;
    *) note refused-link-or-shared "$2" ;;
  esac
}

# Whether the folder's user (RUN_AS) may write a file of uid $1, gid $2:
# root may; a user only their own, of a group they are in.
may_own() {
  [ "$RUN_AS" = 0 ] && return 0
  [ "$1" = "$RUN_AS" ] || return 1
  for g in $(id -G -- "$RUN_AS" 2>/dev/null); do [ "$g" = "$2" ] && return 0; done
  return 1
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

# Runs shell text $1 with the other arguments as RUN_AS (set by `reach`),
# for at most an hour, with $STDIN as its input; prints its last word when
# it is one of OUTCOMES, else failed-write.
OUTCOMES=" restored beside overwritten unchanged made failed-download failed-digest failed-owner failed-write failed-exists failed-no-space "
run_as() {
  text=$1
  shift
  if [ "$RUN_AS" = 0 ]; then
    word=$(printf '%s\n' "$STDIN" | timeout -k 10 3600 sh -c "$text" sh "$@" 2>/dev/null | tail -n 1)
  else
    word=$(printf '%s\n' "$STDIN" | timeout -k 10 3600 setpriv --reuid="$RUN_AS" --regid="$RUN_GROUP" \
      --init-groups sh -c "$text" sh "$@" 2>/dev/null | tail -n 1)
  fi
  case $OUTCOMES in
    *" $word "*) printf '%s\n' "$word" ;;
    *) echo failed-write ;;
  esac
}

MAKE_FOLDER='
set -u
umask 077
mkdir -m 700 -- "$1" 2>/dev/null || { echo failed-write; exit 0; }
# Mode first: once it is given away, its owner could replace it.
chmod -- "$2" "$1" || { echo failed-owner; exit 0; }
if [ "$5" = 1 ]; then chown -h -- "+$3:+$4" "$1"; else chgrp -h -- "+$4" "$1"; fi ||
  { echo failed-owner; exit 0; }
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
      reach "$parent" || { refused $? "$index"; continue; }
      may_own "$f2" "$f3" || { note refused-another-users-folder "$index"; continue; }
      STDIN=
      made=$(run_as "$MAKE_FOLDER" "$target" "$f1" "$f2" "$f3" "$([ "$RUN_AS" = 0 ] && echo 1 || echo 0)")
      [ "$made" = made ] || { note "$made" "$index"; continue; }
      printf '%s %s %s %s\n' "$RUN_AS" "$RUN_GROUP" "$f4" "$f5" >>"$WORK/made"
      ;;
    f)
      # f <index> <sha256> <size> <mode> <uid> <gid> <mtime> <url> <path>
      decode "$f8" || { note refused-path "$index"; continue; }
      target=$ROOT/$P
      parent=${target%/*}
      name=${target##*/}
      [ -d "$parent" ] || { note failed-no-folder "$index"; continue; }
      reach "$parent" || { refused $? "$index"; continue; }
      may_own "$f4" "$f5" || { note refused-another-users-folder "$index"; continue; }
      STDIN=$f7
      outcome=$(run_as "$PLACE" "$parent" "$name" "$f1" "$f2" "$f3" "$f4" "$f5" "$f6" "$SUFFIX" "$OVERWRITE" "$([ "$RUN_AS" = 0 ] && echo 1 || echo 0)")
      note "$outcome" "$index"
      ;;
  esac
done <"$WORK/plan"

# Folders made get their times last (writing into them changed them), by
# whoever made them, never through a link.
while read -r run_as run_group mtime path; do
  decode "$path" || continue
  RUN_AS=$run_as RUN_GROUP=$run_group STDIN=
  run_as 'touch -h -m -d "@$1" -- "$2" && echo made' "$mtime" "$ROOT/$P" >/dev/null
done <"$WORK/made"

[ $more -gt 0 ] && say "TENDER-MORE $more"
say "TENDER-RESULT restored=$restored beside=$beside overwritten=$overwritten unchanged=$unchanged failed=$failed"
[ $failed = 0 ] || exit 1
exit 0
