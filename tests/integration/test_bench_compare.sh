#!/usr/bin/env bash
# tests/integration/test_bench_compare.sh: a smoke test of bench/compare.py,
# the comparison of Cairn with etcd that `make bench` runs (docs/performance.md).
# compare.py --smoke starts one etcd and one Cairn member per workload (put,
# then range), drives them with cairn-bench for 2 s each, and writes its JSON
# (and a PNG when gnuplot is installed) into this test's directory. The checks
# are on the shape and the sanity of the results, never on timings or ratios.
# Runs against both servers whatever CAIRN_TEST_SERVER says; --repeat 2 of put as well; < 60 s.
source "$(dirname "$0")/lib.sh"

bench_bin="$IT_BUILD/cairn-bench"
[[ -x "$bench_bin" ]] || it_fail "no cairn-bench at $bench_bin (build the cairn-bench target)"
[[ -x /usr/bin/etcd ]] || it_fail "/usr/bin/etcd is missing (apt-get install etcd-server)"

it_case "compare.py --smoke runs both servers and writes its results"
out="$IT_TMP/results"
it_run /usr/bin/python3 "$IT_DIR/../../bench/compare.py" --smoke --build "$IT_BUILD" \
  --out "$out" --tmp "$IT_TMP"
assert_eq 0 "$IT_RC" "exit code of compare.py --smoke"
grep -q '^workload  *metric  *etcd  *cairn  *ratio  *goal  *pass' "$IT_TMP/out" ||
  it_fail "no ratio table on stdout"
[[ -s "$out/smoke-latest.json" ]] || it_fail "no $out/smoke-latest.json"
ls "$out"/smoke-2*.json >/dev/null 2>&1 || it_fail "no timestamped JSON in $out"

# The checks below share this: the results file (argv[1]) and need().
cat >"$IT_TMP/results_check.py" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
def need(cond, what):
    if not cond:
        print("bad results: " + what)
        sys.exit(1)
PY

it_case "the JSON holds both servers, every metric, and sane figures"
it_run /usr/bin/python3 - "$out/smoke-latest.json" "$IT_TMP" <<'PY'
import sys
sys.path.insert(0, sys.argv[2])
from results_check import d, need
need(d.get("tool") == "cairn-compare" and d.get("mode") == "smoke", "tool/mode")
runs = d["runs"]
need(sorted((r["workload"], r["server"]) for r in runs) ==
     [("put", "cairn"), ("put", "etcd"), ("range-s", "cairn"), ("range-s", "etcd")],
     "runs: %s" % [(r["workload"], r["server"]) for r in runs])
for r in runs:
    need(r["error"] is None, "%s/%s error: %s" % (r["workload"], r["server"], r["error"]))
    need(r["members"] == 1 and len(r["steps"]) == 1, "one member, one step")
    s = r["steps"][0]
    b = s["bench"]
    where = "%s/%s: " % (r["workload"], r["server"])
    need(s["rc"] == 0 and b is not None, where + "cairn-bench rc=%s" % s["rc"])
    need(b["tool"] == "cairn-bench" and b["workload"] == ("put" if r["workload"] == "put" else "range"),
         where + "cairn-bench JSON")
    need(b["requests"] > 0 and b["errors"] == 0, where + "requests=%s errors=%s" % (b["requests"], b["errors"]))
    need(b["throughput_rps"] > 0 and b["latency_us"]["p99"] > 0, where + "throughput and p99")
    need(s["peak_rss_bytes"] > 1 << 20, where + "peak RSS %s" % s["peak_rss_bytes"])
    need(max(s["sampled_rss_max_bytes_members"]) > 1 << 20, where + "sampled RSS")
    need(s["disk_bytes"] > 0 and s["disk_apparent_bytes"] > 0, where + "disk")
    need(s["server_cpu_s"] >= 0 and s["servers_alive"], where + "CPU, alive")
    # Peak memory with page cache: a memory cgroup per member where the
    # machine lets the script make one (None elsewhere), never a made-up 0.
    cg = s["peak_cgroup_bytes_members"]
    need(len(cg) == 1 and s["peak_cgroup_bytes"] == cg[0], where + "cgroup peak %s" % cg)
    need(cg[0] is None or cg[0] > 1 << 16, where + "cgroup peak %s" % cg)
rows = d["comparisons"]
keys = sorted((r["workload"], r["key"]) for r in rows)
for w in ("put", "range-s"):
    for k in ("throughput", "p99", "rss", "disk", "cpu"):
        need((w, k) in keys, "comparison %s %s" % (w, k))
for r in rows:
    if r["key"] in ("throughput", "p99", "rss", "disk"):
        need(r["etcd"] > 0 and r["cairn"] > 0 and r["ratio"] > 0, "values of %s %s" % (r["workload"], r["key"]))
        need(abs(r["ratio"] - r["cairn"] / r["etcd"]) < 1e-9, "ratio of %s %s" % (r["workload"], r["key"]))
    if r["goal"]:
        need(isinstance(r["pass"], bool), "pass of %s %s" % (r["workload"], r["key"]))
need(any(g["goal"].startswith("peak RSS") for g in d["goals"]), "the RSS goal")
for w in ("put", "range-s"):
    cg = [r for r in rows if r["workload"] == w and r["key"] == "cgroup"]
    need(len(cg) == 1, "comparison %s cgroup" % w)
    measured = all(x["steps"][0]["peak_cgroup_bytes"] is not None for x in runs if x["workload"] == w)
    need((cg[0]["ratio"] is not None) == measured, "ratio of %s cgroup: %s" % (w, cg[0]["ratio"]))
print("ok")
PY
assert_eq 0 "$IT_RC" "JSON check ($(cat "$IT_TMP/out"))"

it_case "--repeat 2: both passes recorded, medians and ranges of the ratios"
out2="$IT_TMP/results2"
it_run /usr/bin/python3 "$IT_DIR/../../bench/compare.py" --smoke --only put --repeat 2 --no-chart \
  --build "$IT_BUILD" --out "$out2" --tmp "$IT_TMP"
assert_eq 0 "$IT_RC" "exit code of compare.py --smoke --repeat 2"
it_run /usr/bin/python3 - "$out2/smoke-latest.json" "$IT_TMP" <<'PY'
import sys
sys.path.insert(0, sys.argv[2])
from results_check import d, need
need(d["settings"]["repeat"] == 2, "settings.repeat")
need(sorted((r["server"], r["repeat"]) for r in d["runs"]) ==
     [("cairn", 0), ("cairn", 1), ("etcd", 0), ("etcd", 1)], "one run per server per pass")
for r in d["comparisons"]:
    if r["key"] in ("throughput", "p99", "rss"):
        rs = r["ratios"]
        need(len(rs) == 2 and all(x > 0 for x in rs), "two ratios for %s" % r["key"])
        need(abs(r["ratio"] - (rs[0] + rs[1]) / 2) < 1e-9, "median of two ratios for %s" % r["key"])
        need(r["ratio_min"] == min(rs) and r["ratio_max"] == max(rs), "range for %s" % r["key"])
print("ok")
PY
assert_eq 0 "$IT_RC" "JSON check of --repeat 2 ($(cat "$IT_TMP/out"))"
it_run /usr/bin/python3 "$IT_DIR/../../bench/compare.py" --scale --repeat 2 --build "$IT_BUILD"
assert_eq 2 "$IT_RC" "--repeat 2 with --scale is refused"

it_case "the chart"
if command -v gnuplot >/dev/null; then
  [[ -s "$out/smoke-latest.png" ]] || it_fail "gnuplot is installed but no $out/smoke-latest.png"
  [[ "$(head -c 4 "$out/smoke-latest.png" | od -An -c | tr -d ' ')" == *PNG* ]] ||
    it_fail "$out/smoke-latest.png is not a PNG"
else
  echo "   gnuplot is not installed: the PNG is not checked (scripts/deps bench installs gnuplot-nox)"
fi

it_done
