#!/usr/bin/env bash
# tests/integration/test_install.sh: libcairn as a user gets it.
# `cmake --install` into a temporary prefix, then examples/hello/hello.c is
# built outside the tree with `pkg-config libcairn`, once against the shared
# library and once statically, and both run against a real server; etcdctl
# reads what they wrote.
#
#   bash tests/integration/test_install.sh <build-dir>
#   CAIRN_TEST_SERVER=etcd bash tests/integration/test_install.sh <build-dir>
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" "$@"

SRC=$(cd "$IT_DIR/../.." && pwd)
PREFIX="$IT_TMP/prefix"

it_case "cmake --install into a prefix"
it_run cmake --install "$IT_BUILD" --prefix "$PREFIX"
assert_rc 0
for f in include/cairn/cairn.h include/cairn/rpc.pb-c.h include/cairn/kv.pb-c.h \
  include/cairn/common/cairn_error.h bin/cairnctl; do
  [[ -e "$PREFIX/$f" ]] || it_fail "$f was not installed"
done
pc=$(find "$PREFIX" -name libcairn.pc | head -n 1)
[[ -n "$pc" ]] || it_fail "libcairn.pc was not installed"
libdir=$(dirname "$(dirname "$pc")")
for f in libcairn.so libcairn.a; do
  [[ -e "$libdir/$f" ]] || it_fail "$f was not installed in $libdir"
done
export PKG_CONFIG_PATH
PKG_CONFIG_PATH=$(dirname "$pc")

it_case "the shared library exports the API only"
# cairn_* functions, the error table and etcd's message descriptors; the
# gRPC layer (grpc_*) stays inside.
it_run bash -c "nm -D --defined-only '$libdir/libcairn.so' | awk '\$2 == \"T\" {print \$3}' | grep -v -E '^(cairn_|etcdserverpb__|mvccpb__|authpb__|_init\$|_fini\$)'"
assert_out_empty

# Sanitizer builds need the same flags in the program that links them.
san=""
if grep -q "CAIRN_SANITIZE:BOOL=ON" "$IT_BUILD/CMakeCache.txt"; then
  san="-fsanitize=address,undefined"
fi

it_case "hello, built with pkg-config against the shared library"
it_run bash -c "cc $san -Wall -Wextra -Werror -o '$IT_TMP/hello' '$SRC/examples/hello/hello.c' \$(pkg-config --cflags --libs libcairn)"
assert_rc 0
it_case "hello, built with pkg-config --static against libcairn.a"
it_run bash -c "cc $san -Wall -Wextra -Werror -o '$IT_TMP/hello-static' '$SRC/examples/hello/hello.c' \$(pkg-config --cflags libcairn) '$libdir/libcairn.a' \$(pkg-config --static --libs-only-l libcairn | sed 's/-lcairn//')"
assert_rc 0
it_run bash -c "ldd '$IT_TMP/hello-static' | grep -c libcairn"
assert_out <<<"0"

it_server_up

it_case "both programs write and read through the server"
it_run env LD_LIBRARY_PATH="$libdir" "$IT_TMP/hello" "$IT_ENDPOINT" greeting hello
assert_rc 0
assert_match "^greeting=hello at revision [0-9]+$" "$(it_out)" "hello's output"
it_run "$IT_TMP/hello-static" "127.0.0.1:1,$IT_ENDPOINT" greeting again
assert_rc 0
assert_match "^greeting=again at revision [0-9]+$" "$(it_out)" "hello-static's output"
ctl_ok get greeting --print-value-only <<<"again"

it_case "a server that is not there: the error, exit 1"
it_run env LD_LIBRARY_PATH="$libdir" "$IT_TMP/hello" 127.0.0.1:1 k v
assert_rc 1
assert_err_has "context deadline exceeded"

it_server_stop
it_done
