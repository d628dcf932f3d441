# baton: the two commands a newcomer needs.
#   make demo   installs what is missing, builds baton, and runs the main job (set-up log in build/)
#   make test   installs what is missing, builds, and runs the whole suite
# Other targets: build, deps, sanitize (ASan+UBSan suite), fuzz (libFuzzer with clang),
# mutants (plants the one-line bugs of scripts/mutants.txt and checks the tests catch each), clean.

BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBATON_WERROR=ON

.PHONY: all deps configure build test demo sanitize fuzz mutants clean

all: build

deps:
	@./scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	@ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# The demo builds the baton executable only (not the tests, benchmarks or fuzzers), in a build
# tree of its own: -O1 without debug information (the demo's time is Unicorn's and Z3's, so it
# runs as fast as at -O2), precompiled CLI11/JSON/Z3 headers, and only the subcommands
# scripts/demo.sh runs (BATON_DEMO; no test uses this executable). It keeps the set-up quiet:
# packages, configure and build go to a log, shown only when a step fails.
DEMO_BUILD = $(BUILD)/demo-build
DEMO_LOG = $(BUILD)/demo-setup.log
DEMO_FLAGS ?= -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG" \
              "-DCMAKE_C_FLAGS_RELEASE=-O1 -DNDEBUG" -DBATON_DEMO=ON -DBATON_WERROR=ON
demo:
	@mkdir -p $(BUILD)
	@echo "demo: setting up (Debian packages, configure, build baton); log: $(DEMO_LOG)"
	@{ ./scripts/install-deps.sh && cmake -S . -B $(DEMO_BUILD) -G Ninja $(DEMO_FLAGS) && \
	   cmake --build $(DEMO_BUILD) -j $(JOBS) --target baton; } >$(DEMO_LOG) 2>&1 || \
	 { echo "demo: set-up failed; the end of $(DEMO_LOG):"; tail -n 25 $(DEMO_LOG); exit 1; }
	@./scripts/demo.sh $(DEMO_BUILD)/cli/baton $(BUILD)/demo

sanitize: deps
	@cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DBATON_SANITIZE=ON -DBATON_WERROR=ON >/dev/null
	@cmake --build build-asan -j $(JOBS)
	@ctest --test-dir build-asan --output-on-failure -j $(JOBS)

fuzz: deps
	@CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBATON_FUZZ=ON >/dev/null
	@cmake --build build-fuzz -j $(JOBS) --target loader_fuzz snapshot_fuzz trace_fuzz
	@echo "fuzzers are in build-fuzz/fuzz/ (run e.g. build-fuzz/fuzz/snapshot_fuzz -max_total_time=60 CORPUS_DIR build-fuzz/fuzz/snapshot_corpus; docs/benchmarks.md, Fuzzing)"

# Not part of `make test`: rebuilds in a scratch copy under /tmp (docs/testing.md, "Mutants").
mutants: deps
	@./scripts/mutants.sh

clean:
	rm -rf $(BUILD) build-asan build-fuzz
