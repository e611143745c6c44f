# pcache-ublk — see README.md.
#   make demo    set up, build, and show a cached block device doing real I/O (in a VM here)
#   make test    set up, build, run the unit tests and the VM end-to-end tests
#   make bench   native cache benchmark, then the VM side-by-side benchmark

SWIFT        ?= swift
STATIC_BUILD := .build-static
STATIC_BIN   := $(STATIC_BUILD)/release/pcache-ublk
export PCACHE_BIN := $(abspath $(STATIC_BIN))

.PHONY: all setup build static test unit-test vm-test demo bench bench-native bench-vm clean

all: build

setup:
	@scripts/setup-deps.sh

build: setup
	$(SWIFT) build -c release

# A binary that needs nothing from the Swift toolchain folder, so it runs
# inside the VM, which sees only the host's /usr and /etc.
static: setup
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path $(STATIC_BUILD) --product pcache-ublk

unit-test: setup
	$(SWIFT) test

vm-test: static
	Tests/VM/run-tests.sh

test: unit-test vm-test

demo: static
	Tests/VM/demo.sh

bench-native: setup
	$(SWIFT) build -c release --product pcache-bench
	.build/release/pcache-bench

bench-vm: static
	Tests/VM/bench.sh

bench: bench-native bench-vm

clean:
	rm -rf .build $(STATIC_BUILD) .vm-cache/work
