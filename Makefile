# Thin wrapper over CMake. `make run`, `make test`, `make bench`.
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps build run test test-fast test-asan bench clean format

all: build

deps:
	@scripts/deps

build: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	@echo "make run: the cairn server arrives with issue 3 (single node over gRPC); not yet."
	@echo "What exists now: the storage engine, its tests (make test) and benchmark (make bench)."

# The whole suite: a -Werror build and its tests, then the same under ASan+UBSan.
test: deps
	@scripts/test

test-fast: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

bench: build
	@scripts/bench

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')
