#!/usr/bin/env bash
# check.sh BUILD_DIR
#
# Install the build in BUILD_DIR into a temporary prefix, then build and run
# an outside program against that prefix twice: through pkg-config (with
# PKG_CONFIG_PATH) and through CMake's find_package(mproc) (with
# CMAKE_PREFIX_PATH, both mproc::mproc and mproc::mproc_static). The
# temporary directory is removed whatever happens.
#
# Environment (all optional; tests/CMakeLists.txt sets them):
#   CC                     compiler for the consumer (default: cc)
#   CMAKE                  cmake binary (default: cmake)
#   MPROC_CONSUMER_CFLAGS  extra compile+link flags (sanitizer builds)
#   MPROC_EXPECT_VERSION   version the programs must print
#
# Exit: 0 pass, 1 fail, 77 skipped (pkg-config missing), 2 usage.
set -euo pipefail

if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    echo "usage: $0 BUILD_DIR" >&2
    exit 2
fi
build_dir=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
cc=${CC:-cc}
cmake=${CMAKE:-cmake}
extra=${MPROC_CONSUMER_CFLAGS:-}
expect=${MPROC_EXPECT_VERSION:-}

if ! command -v pkg-config >/dev/null 2>&1; then
    echo "SKIP: pkg-config not found"
    exit 77
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mproc-install-check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# run LOG CMD...: run quietly, show the log if it fails.
run() {
    local log=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        fail "$*"
    fi
}

# check_output PROGRAM: runs it, checks what it prints.
check_output() {
    local out
    out=$("$1") || fail "$1 exited with $?"
    if [ -n "$expect" ] && [ "$out" != "mproc $expect" ]; then
        fail "$1 printed '$out', expected 'mproc $expect'"
    fi
    echo "ok: $(basename "$1"): $out"
}

# ---- install
echo "== cmake --install $build_dir --prefix $prefix"
run "$tmp/install.log" "$cmake" --install "$build_dir" --prefix "$prefix"

pc=$(find "$prefix" -name mproc.pc -path '*/pkgconfig/*' | head -n 1)
[ -n "$pc" ] || fail "no mproc.pc installed"
libdir=$(dirname "$(dirname "$pc")")
for f in "$prefix/include/mproc.h" "$libdir/libmproc.a" "$libdir/libmproc.so" \
    "$libdir/cmake/mproc/mprocConfig.cmake" "$libdir/cmake/mproc/mprocConfigVersion.cmake" \
    "$libdir/cmake/mproc/mprocTargets.cmake"; do
    [ -e "$f" ] || fail "not installed: ${f#"$prefix"/}"
done
soname=$(find "$libdir" -maxdepth 1 -name 'libmproc.so.[0-9]*' | head -n 1)
[ -n "$soname" ] || fail "no versioned libmproc.so.N installed"
if [ -e "$build_dir/tools/mproc" ]; then
    [ -x "$prefix/bin/mproc" ] || fail "bin/mproc not installed"
    out=$("$prefix/bin/mproc" --version) || fail "installed mproc --version failed"
    [ -z "$expect" ] || [ "$out" = "mproc $expect" ] || fail "installed mproc printed '$out'"
    echo "ok: bin/mproc --version: $out"
fi

# ---- pkg-config
echo "== pkg-config consumer"
export PKG_CONFIG_PATH="$(dirname "$pc")${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
pc_version=$(pkg-config --modversion mproc) || fail "pkg-config cannot read mproc.pc"
[ -z "$expect" ] || [ "$pc_version" = "$expect" ] || fail "mproc.pc says version $pc_version"
pc_libdir=$(pkg-config --variable=libdir mproc)
[ "$pc_libdir" -ef "$libdir" ] || fail "mproc.pc libdir $pc_libdir is not $libdir"
# shellcheck disable=SC2046,SC2086 # word splitting of flags is wanted
run "$tmp/pkgconfig.log" "$cc" -std=c11 -Wall -Wextra -Werror $extra \
    $(pkg-config --cflags mproc) "$here/main.c" -o "$tmp/consumer_pc" \
    $(pkg-config --libs mproc) -Wl,-rpath,"$pc_libdir" $extra
check_output "$tmp/consumer_pc"
# Capture first: grep -q would close the pipe early and, under pipefail,
# ldd's SIGPIPE would fail the check at random.
deps=$(ldd "$tmp/consumer_pc")
grep -q "$libdir/libmproc.so" <<<"$deps" ||
    fail "consumer_pc does not load the installed libmproc.so"

# ---- find_package
echo "== find_package consumer"
run "$tmp/cmake-configure.log" "$cmake" -S "$here" -B "$tmp/consumer-build" \
    -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER="$cc" \
    -DCMAKE_C_FLAGS="$extra" -DCMAKE_EXE_LINKER_FLAGS="$extra"
grep -q "mproc found in $libdir/cmake/mproc" "$tmp/cmake-configure.log" || {
    cat "$tmp/cmake-configure.log" >&2
    fail "find_package did not find the mproc installed in $prefix"
}
run "$tmp/cmake-build.log" "$cmake" --build "$tmp/consumer-build"
check_output "$tmp/consumer-build/consumer"
check_output "$tmp/consumer-build/consumer_static"
deps=$(ldd "$tmp/consumer-build/consumer")
grep -q "$libdir/libmproc.so" <<<"$deps" ||
    fail "consumer does not load the installed libmproc.so"
deps=$(ldd "$tmp/consumer-build/consumer_static")
if grep -q libmproc <<<"$deps"; then
    fail "consumer_static loads libmproc.so"
fi

echo "install_consumers: all checks passed"
