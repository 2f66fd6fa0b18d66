#!/bin/bash
# run_reload.sh MPROC HTTP_PREFORK - `mproc run` serving the prefork HTTP
# example under load from wrk, through 5 HUP reloads and then 2 USR2
# upgrades (the master re-executes itself; each time a new generation is
# up, READY=1, before the old one stops): every request must succeed
# (wrk: no socket errors, no non-2xx), the master keeps its pid, and
# after a graceful stop nothing is left: no worker, no listening socket,
# no counter segment.
#
# run_reload.sh MPROC HTTP_PREFORK master - the same through the library's
# prefork mode: `http_prefork --master` is its own supervisor (preload,
# forked workers, no exec), and USR2 re-executes http_prefork itself.
#
# Needs wrk (Debian package; scripts/deps.sh installs it): exits 77
# (skipped) without it. Bounded: wrk runs 9 s, every wait has a limit.
set -u

MPROC=${1:?usage: run_reload.sh MPROC HTTP_PREFORK [master]}
HTTP=${2:?usage: run_reload.sh MPROC HTTP_PREFORK [master]}
MODE=${3:-run}

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

command -v wrk >/dev/null 2>&1 || { echo "SKIP: wrk is missing"; exit 77; }

work=$(mktemp -d "${TMPDIR:-/tmp}/mproc-reload.XXXXXX") || fail "mktemp"
ctr="reload-test-$$"
master=""
cleanup() {
    [ -n "$master" ] && kill -KILL "$master" 2>/dev/null
    "$HTTP" --remove-counter "$ctr" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

# A free port: bind to 0 and read what the master logs.
"$HTTP" --make-counter "$ctr" || fail "--make-counter"
if [ "$MODE" = master ]; then
    HTTP_COUNTER_SHM=$ctr "$HTTP" --master 127.0.0.1:0 2 2>"$work/log" &
else
    HTTP_COUNTER_SHM=$ctr "$MPROC" run -w 2 --bind 127.0.0.1:0 --ready --graceful-timeout 10 \
        --pidfile "$work/pid" -- "$HTTP" 2>"$work/log" &
fi
master=$!

port=""
for _ in $(seq 1 100); do
    port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\) .*/\1/p' "$work/log" | head -1)
    [ -n "$port" ] && [ "$(grep -c ' ready$' "$work/log")" -ge 2 ] && break
    sleep 0.05
done
[ -n "$port" ] || fail "no port in the master's log: $(cat "$work/log")"
[ "$MODE" = master ] || [ "$(cat "$work/pid")" = "$master" ] ||
    fail "pidfile holds $(cat "$work/pid"), master is $master"

wrk -t2 -c32 -d9s "http://127.0.0.1:$port/" >"$work/wrk" 2>&1 &
wrk_pid=$!
sleep 1
i=0
for sig in HUP HUP HUP HUP HUP USR2 USR2; do
    i=$((i + 1))
    kill -"$sig" "$master" || fail "$sig ($i)"
    # The next reload only once this one is done: 2 more workers ready.
    want=$((2 + 2 * i))
    for _ in $(seq 1 200); do
        [ "$(grep -c ' ready$' "$work/log")" -ge "$want" ] && break
        sleep 0.05
    done
    [ "$(grep -c ' ready$' "$work/log")" -ge "$want" ] || fail "$sig ($i): new workers not ready"
    sleep 0.5
done
wait "$wrk_pid"
cat "$work/wrk"
grep -q "requests in" "$work/wrk" || fail "wrk did not run"
grep -q "Socket errors" "$work/wrk" && fail "socket errors during the reloads"
grep -q "Non-2xx" "$work/wrk" && fail "non-2xx responses during the reloads"
[ "$(grep -c 'reload: starting a new generation' "$work/log")" = 5 ] || fail "not 5 reloads"
[ "$(grep -c "mproc\[$master\]: master pid $master: re-executed" "$work/log")" = 2 ] ||
    fail "not 2 upgrades by the same pid"

kill -TERM "$master"
for _ in $(seq 1 200); do
    kill -0 "$master" 2>/dev/null || break
    sleep 0.05
done
kill -0 "$master" 2>/dev/null && fail "the master did not stop"
wait "$master"
rc=$?
master=""
[ "$rc" = 0 ] || fail "the master exited with $rc"
grep -q "master exits with status 0" "$work/log" || fail "no clean exit in the log"
for pid in $(sed -n 's/.*worker [0-9]* pid \([0-9]*\) started.*/\1/p' "$work/log"); do
    kill -0 "$pid" 2>/dev/null && fail "worker $pid left behind"
done
echo "ok ($MODE): 5 reloads and 2 upgrades under load, no failed request"
