#!/usr/bin/env bash
# tests/integration/test_python.sh: python3-etcd3 (Debian's python3-etcd3,
# grpcio) against a single-member server: get/put/delete, prefixes,
# transactions, watch and watch_prefix with event checks, leases with refresh
# and expiry, lock. The cases are in python_client.py; this script starts the
# server and runs it.
#
#   bash tests/integration/test_python.sh <build-dir> [CASE...]
#   CAIRN_TEST_SERVER=etcd bash tests/integration/test_python.sh <build-dir>
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" "$@"
shift

it_case "start a fresh single-member server"
it_server_up

it_case "python_client.py"
timeout 300 "$IT_PYTHON" "$IT_DIR/python_client.py" "$IT_ENDPOINT" "$IT_NAME" "$@"
rc=$?
if [[ $rc -eq 124 ]]; then
  it_fail "python_client.py did not finish within 300 s"
elif [[ $rc -ne 0 ]]; then
  it_fail "python_client.py failed (exit code $rc; the failing case is above)"
fi
assert_server_alive

it_case "SIGTERM stops the server"
it_server_stop

it_done
