#!/bin/bash
# cli_clean.sh MPROC SHM_TREE - `mproc clean [--dry-run]` after a process
# tree was killed wholesale, its resource trackers included (P7).
#
# In a private mount namespace with its own tmpfs on /dev/shm:
#  - a "live" shm_tree (alive until the end, then it ends normally) holds 4
#    named segments;
#  - a "doomed" shm_tree holds 12 (top, fork child, grandchild, spawn child,
#    each with 3; two trackers) in a pid namespace of its own, so that one
#    SIGKILL to its init kills every member and every tracker at once, and
#    the kernel has reaped them all when `unshare` returns;
#  - /dev/shm also holds files that are not segments (one named mproc-*).
# Then `mproc clean --dry-run` lists exactly the doomed segments and
# removes nothing, `mproc clean` lists and removes exactly those, a second
# dry run finds nothing, the live tree's segments are never listed or
# touched, and once the live tree has ended normally /dev/shm is what it
# was before.
#
# Each tree runs in a pid namespace of its own under `unshare --kill-child`,
# so that whatever happens to this script, killing that unshare takes the
# whole tree (trackers included) with it.
#
# Needs root (unshare, mount); exits 77 (skipped) without it.
set -u

MPROC=${1:?usage: cli_clean.sh MPROC SHM_TREE}
TREE=${2:?usage: cli_clean.sh MPROC SHM_TREE}

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
skip() {
    echo "SKIP: $*"
    exit 77
}

if [ "${CLI_CLEAN_INNER:-}" != 1 ]; then
    [ "$(id -u)" = 0 ] || skip "needs root for a private /dev/shm"
    command -v unshare >/dev/null 2>&1 || skip "unshare(1) is missing"
    unshare -m --propagation private true 2>/dev/null || skip "no mount namespace"
    unshare -p -f --mount-proc --kill-child true 2>/dev/null || skip "no pid namespace"
    CLI_CLEAN_INNER=1 exec unshare -m --propagation private bash "$0" "$@"
fi

mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm || skip "cannot mount a tmpfs on /dev/shm"

tmp=$(mktemp -d) || fail "mktemp"
live_pid= doom_upid=
cleanup() {
    # only what this script started, by pid: an unshare --kill-child, whose
    # death kills its pid namespace's init, and so the whole tree
    [ -n "$live_pid" ] && kill -KILL "$live_pid" 2>/dev/null
    [ -n "$doom_upid" ] && kill -KILL "$doom_upid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

# Lines of a tree's stdout (on fd $1) up to READY, into file $2; 20 s limit.
read_tree() {
    local fd=$1 out=$2 line
    : >"$out"
    while IFS= read -r -t 20 -u "$fd" line; do
        [ "$line" = READY ] && return 0
        printf '%s\n' "$line" >>"$out"
    done
    return 1
}

seg_paths() { # segment paths named in a tree's lines, sorted
    sed -n 's|^seg |/dev/shm/mproc-|p' "$1" | sort
}

# ---------------------------------------------------------------- before
printf 'not a segment\n' >/dev/shm/other-file
printf 'named like a segment, but it is not one: 0123456789abcdef\n' >/dev/shm/mproc-junk
chmod 600 /dev/shm/other-file /dev/shm/mproc-junk
before=$(ls -A /dev/shm | sort)

# ---------------------------------------------------------------- the live tree
mkfifo "$tmp/live.in" "$tmp/live.out" "$tmp/doom.out" || fail "mkfifo"
unshare -p -f --mount-proc --kill-child "$TREE" 1 live <"$tmp/live.in" >"$tmp/live.out" &
live_pid=$!
exec 5>"$tmp/live.in" 6<"$tmp/live.out"
read_tree 6 "$tmp/live.lines" || fail "the live tree did not report READY"
live=$(seg_paths "$tmp/live.lines")
[ "$(printf '%s\n' "$live" | grep -c .)" = 4 ] || fail "live tree: expected 4 segments, got: $live"

# ---------------------------------------------------------------- the doomed tree
unshare -p -f --mount-proc --kill-child "$TREE" 3 hold >"$tmp/doom.out" &
doom_upid=$!
exec 7<"$tmp/doom.out"
read_tree 7 "$tmp/doom.lines" || fail "the doomed tree did not report READY"
doomed=$(seg_paths "$tmp/doom.lines")
[ "$(printf '%s\n' "$doomed" | grep -c .)" = 12 ] || fail "doomed tree: expected 12 segments, got: $doomed"
ntrackers=$(grep -c '^tracker ' "$tmp/doom.lines")
[ "$ntrackers" -ge 1 ] || fail "doomed tree: no tracker reported"
for p in $doomed $live; do
    [ -f "$p" ] || fail "$p does not exist while its tree runs"
done

# a dry run now lists none of them: all are in use
out=$("$MPROC" clean --dry-run) || fail "mproc clean --dry-run (all in use) exited $?"
[ -z "$out" ] || fail "mproc clean --dry-run listed segments in use: $out"

# kill the whole doomed tree, trackers included, at once: SIGKILL its pid
# namespace's init; the kernel kills and reaps every other member before
# the init's exit completes, so all are gone when unshare returns (killing
# unshare itself would not wait for that)
init=$(cat "/proc/$doom_upid/task/$doom_upid/children" 2>/dev/null || pgrep -P "$doom_upid")
init=$(echo $init)
case "$init" in
'' | *' '*) fail "cannot find the doomed tree's init (got '$init')" ;;
esac
kill -KILL "$init" || fail "kill $init"
wait "$doom_upid"
doom_upid=
exec 7<&-

for p in $doomed; do
    if [ ! -f "$p" ]; then
        cat "$tmp/doom.lines" >&2
        ls -l /dev/shm >&2
        fail "$p vanished before mproc clean (was its tracker not killed?)"
    fi
done

# ---------------------------------------------------------------- mproc clean --dry-run
out=$("$MPROC" clean --dry-run)
rc=$?
[ $rc = 0 ] || fail "mproc clean --dry-run exited $rc"
got=$(printf '%s\n' "$out" | sed '/^$/d' | sort)
if [ "$got" != "$doomed" ]; then
    echo "expected:" >&2
    printf '%s\n' "$doomed" >&2
    echo "got:" >&2
    printf '%s\n' "$got" >&2
    fail "mproc clean --dry-run did not list exactly the abandoned segments"
fi
for p in $doomed $live; do
    [ -f "$p" ] || fail "$p was removed by a dry run"
done

"$MPROC" clean --no-such-option >/dev/null 2>&1
rc=$?
[ $rc = 2 ] || fail "mproc clean --no-such-option exited $rc, not 2"

# ---------------------------------------------------------------- mproc clean
out=$("$MPROC" clean)
rc=$?
[ $rc = 0 ] || fail "mproc clean exited $rc"
got=$(printf '%s\n' "$out" | sed '/^$/d' | sort)
[ "$got" = "$doomed" ] || fail "mproc clean listed: $got"
for p in $doomed; do
    [ ! -e "$p" ] || fail "$p survived mproc clean"
done
for p in $live; do
    [ -f "$p" ] || fail "mproc clean removed $p, which a live process uses"
done
[ -f /dev/shm/other-file ] || fail "mproc clean removed /dev/shm/other-file"
[ -f /dev/shm/mproc-junk ] || fail "mproc clean removed /dev/shm/mproc-junk (not a segment)"

out=$("$MPROC" clean --dry-run)
rc=$?
[ $rc = 0 ] || fail "second mproc clean --dry-run exited $rc"
[ -z "$out" ] || fail "second mproc clean --dry-run listed: $out"

# ---------------------------------------------------------------- the live tree ends
exec 5>&- # EOF on its stdin: every member unlinks its segments and exits
wait "$live_pid"
rc=$?
live_pid=
[ $rc = 0 ] || fail "the live tree exited $rc"
exec 6<&-
after=$(ls -A /dev/shm | sort)
if [ "$after" != "$before" ]; then
    echo "before: $before" >&2
    echo "after:  $after" >&2
    fail "/dev/shm differs from its snapshot"
fi
echo "ok: mproc clean removed exactly the ${ntrackers}-tracker tree's 12 abandoned segments"
exit 0
