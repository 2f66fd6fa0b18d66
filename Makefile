# mproc - top-level Makefile: a thin driver over CMake.
#
#   make [all|build]        configure + build (RelWithDebInfo) in build/
#   make test               deps, build, ctest; without SANITIZE/PORTABLE also
#                           the same suite in build/portable (POSIX fallbacks)
#                           and every fuzz target for FUZZ_SECONDS (10) each
#   make fuzz               the fuzz targets only, FUZZ_SECONDS (300) each
#   make demo               deps, build, run build/examples/mproc_demo
#   make bench              deps, build, python3 bench/run.py --build-dir build
#   make install            build, cmake --install (PREFIX=/usr/local)
#   make format             clang-format -i every .c/.h
#   make format-check       fail if any file is not formatted
#   make clean              rm -rf build
#
# Variables:
#   SANITIZE=address,undefined | thread | ...   build in build/san-<name>
#   PORTABLE=1                 build in build/portable (-DMPROC_PORTABLE=ON)
#   BUILD_TYPE=RelWithDebInfo  CMAKE_BUILD_TYPE
#   PREFIX=/usr/local          install prefix
#   JOBS=2                     parallel build and test jobs
#   CC=clang                   compiler (passed to CMake when given)
#   CMAKE_ARGS=...             extra arguments for the CMake configure step
#   CTEST_ARGS=...             extra arguments for ctest (e.g. -R test_errors)
#   BENCH_ARGS=...             extra arguments for bench/run.py (e.g. --quick)
#   FUZZ_SECONDS=N             how long each fuzz target runs

# CMake and ctest do the parallel work; the steps here run in order.
.NOTPARALLEL:
MAKEFLAGS += --no-print-directory

BUILD_TYPE ?= RelWithDebInfo
PREFIX ?= /usr/local
JOBS ?= 2
SANITIZE ?=
PORTABLE ?=
CMAKE ?= cmake
CTEST ?= ctest
PYTHON ?= python3
CLANG_FORMAT ?= clang-format
CMAKE_ARGS ?=
CTEST_ARGS ?=
BENCH_ARGS ?=

# PORTABLE=0/OFF/no means off.
PORTABLE_ON := $(filter-out 0 OFF Off off NO No no FALSE False false,$(PORTABLE))

comma := ,
san_name := $(subst $(comma),-,$(SANITIZE))

# The build directory and its CMake options follow from SANITIZE/PORTABLE.
BUILD_DIR := build
CONFIG_ARGS := -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)
ifneq ($(SANITIZE),)
  BUILD_DIR := build/san-$(san_name)
  CONFIG_ARGS += -DMPROC_SANITIZE=$(SANITIZE)
endif
ifneq ($(PORTABLE_ON),)
  ifeq ($(SANITIZE),)
    BUILD_DIR := build/portable
  else
    BUILD_DIR := $(BUILD_DIR)-portable
  endif
  CONFIG_ARGS += -DMPROC_PORTABLE=ON
else
  CONFIG_ARGS += -DMPROC_PORTABLE=OFF
endif

# The compiler: CC when given on the command line or in the environment
# (make's built-in default `cc` is not passed). gcc 12 and clang 14 both
# build and run every sanitizer here, ThreadSanitizer included.
ifneq ($(filter command line environment,$(origin CC)),)
  CONFIG_CC := $(CC)
else
  CONFIG_CC :=
endif
ifneq ($(CONFIG_CC),)
  CONFIG_ARGS += -DCMAKE_C_COMPILER=$(CONFIG_CC)
endif
CONFIG_ARGS += $(CMAKE_ARGS)

# $(call cmake_build,DIR,ARGS): configure (idempotent) and build DIR.
define cmake_build
	$(CMAKE) -S . -B $(1) $(2)
	$(CMAKE) --build $(1) --parallel $(JOBS)
endef

# $(call ctest_run,DIR): run the suite in DIR.
define ctest_run
	cd $(1) && $(CTEST) --output-on-failure --no-label-summary -j$(JOBS) $(CTEST_ARGS)
endef

.PHONY: all build test fuzz demo bench install format format-check clean deps

all: build

build:
	$(call cmake_build,$(BUILD_DIR),$(CONFIG_ARGS))
ifeq ($(BUILD_DIR),build)
	@ln -sfn build/compile_commands.json compile_commands.json
endif

deps:
	@bash scripts/deps.sh

# Without SANITIZE and PORTABLE, `make test` also runs the whole suite
# against the portable build (MPROC_NO_FASTPATHS: no pidfd, clone3,
# close_range, memfd) so that CI covers the fallbacks. Both runs always
# happen (each prints its CTest summary); the target fails if either failed.
# The fuzz targets: clang with libFuzzer, library and harness under ASan
# and UBSan, nothing else built there (fuzz/CMakeLists.txt).
FUZZ_DIR := build/fuzz
FUZZ_ARGS := -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang -DMPROC_FUZZ=ON \
	-DMPROC_BUILD_TESTS=OFF -DMPROC_BUILD_BENCH=OFF -DMPROC_BUILD_EXAMPLES=OFF \
	-DMPROC_BUILD_TOOLS=OFF

ifeq ($(SANITIZE)$(PORTABLE_ON),)
test: deps build
	$(call cmake_build,build/portable,-DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DMPROC_PORTABLE=ON $(if $(CONFIG_CC),-DCMAKE_C_COMPILER=$(CONFIG_CC)) $(CMAKE_ARGS))
	$(call cmake_build,$(FUZZ_DIR),$(FUZZ_ARGS))
	@rc=0; \
	echo "== ctest: build (Linux fast paths)"; \
	( $(call ctest_run,build) ) || rc=1; \
	echo "== ctest: build/portable (POSIX fallbacks)"; \
	( $(call ctest_run,build/portable) ) || rc=1; \
	echo "== ctest: build/fuzz (each fuzz target for $${FUZZ_SECONDS:-10} s)"; \
	( cd $(FUZZ_DIR) && FUZZ_SECONDS=$${FUZZ_SECONDS:-10} $(CTEST) --output-on-failure --no-label-summary -j$(JOBS) $(CTEST_ARGS) ) || rc=1; \
	exit $$rc
else
test: deps build
	$(call ctest_run,$(BUILD_DIR))
endif

fuzz: deps
	$(call cmake_build,$(FUZZ_DIR),$(FUZZ_ARGS))
	cd $(FUZZ_DIR) && FUZZ_SECONDS=$${FUZZ_SECONDS:-300} $(CTEST) --output-on-failure --no-label-summary -j$(JOBS) $(CTEST_ARGS)

demo: deps build
	$(BUILD_DIR)/examples/mproc_demo

bench: deps build
	$(PYTHON) bench/run.py --build-dir $(BUILD_DIR) $(BENCH_ARGS)

# As root (and not staging into DESTDIR), refresh the dynamic linker's cache
# so that programs find the new libmproc.so.0 in PREFIX/lib.
install: build
	$(CMAKE) --install $(BUILD_DIR) --prefix $(PREFIX)
	@if [ "$$(id -u)" = 0 ] && [ -z "$$DESTDIR" ] && command -v ldconfig >/dev/null 2>&1; then ldconfig; fi

FORMAT_DIRS := include src tools tests bench examples fuzz
FORMAT_FILES = $(shell find $(FORMAT_DIRS) -name '*.[ch]' -type f 2>/dev/null | sort)

format:
	$(CLANG_FORMAT) -i $(FORMAT_FILES)

format-check:
	$(CLANG_FORMAT) --dry-run --Werror $(FORMAT_FILES)

clean:
	rm -rf build
	@if [ -L compile_commands.json ]; then rm -f compile_commands.json; fi
