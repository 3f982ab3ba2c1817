# Thin wrapper over CMake. `make run`, `make test`, `make bench`.
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps build run test test-fast test-asan bench bench-storage clean format

all: build

deps:
	@scripts/deps

build: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# A single member on 127.0.0.1:2379 with its data in ./data.
run: build
	@test -x $(BUILD)/cairn || { echo "make run: $(BUILD)/cairn was not built"; exit 1; }
	$(BUILD)/cairn --name default --data-dir ./data \
	  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	  --initial-cluster default=http://127.0.0.1:2380

# The whole suite: a -Werror build and its tests, then the same under ASan+UBSan.
test: deps
	@scripts/test

test-fast: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Cairn beside etcd (bench/compare.py, docs/performance.md): up to ~15 min.
bench: build
	@scripts/bench

# The storage microbenchmark (MVCC layer beside raw LMDB, docs/storage-bench.md).
bench-storage: build
	@scripts/bench --storage

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')
