# dmalab: build everything that is missing, then run or test it.
#   make run    boot the VM and show transfers end to end
#   make test   unit tests, lints, end-to-end tests
# Heavy outputs (QEMU, the guest kernel, tools) live in $(CACHE), keyed by version and a hash
# of patches/config/flags. QEMU=/path/to/qemu-system-x86_64 (>= 10.1 with vfio-user-pci) or
# KERNEL_SRC=/path/to/linux-7.3 skip those builds.

SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/dmalab
export DMALAB_CACHE := $(CACHE)
export QEMU KERNEL_SRC
P := target/paths
AGENT := target/x86_64-unknown-linux-gnu/release/dmalab-agent
CARGO_E2E := cargo test --release -p dmalab-harness --test e2e

.PHONY: conformance conformance-selftest kernel-patches kernel-doctests bench-streaming bench-kernel bench-oracle check-soak all deps qemu kernel device oracle driver agent initramfs artifacts run test unit lint e2e bench campaign fuzz fuzz-smoke miri miri-smoke sanitize loom loom-smoke lint-host lint-driver compile-fail exercises exercise check-step clean

all: artifacts

deps:
	@scripts/deps.sh

$(P):
	@mkdir -p $(P)

qemu: deps | $(P)
	@scripts/build-qemu.sh > $(P)/qemu.tmp && mv $(P)/qemu.tmp $(P)/qemu

kernel: deps | $(P)
	@scripts/build-kernel.sh > $(P)/kbuild.tmp && mv $(P)/kbuild.tmp $(P)/kbuild
	@echo "$$(cat $(P)/kbuild)/arch/x86/boot/bzImage" > $(P)/kernel

device: | $(P)
	@cargo build --release -q -p dmalab-device -p dmalab-harness --bins
	@echo "$(CURDIR)/target/release/dmalab-device" > $(P)/device

# The DMA ownership oracle: a TCG plugin for the QEMU the build makes (plugin API v5).
oracle: qemu | $(P)
	@cargo build --release -q -p dmalab-oracle
	@echo "$(CURDIR)/target/release/libdmalab_oracle.so" > $(P)/oracle

driver: kernel
	@scripts/build-driver.sh "$$(cat $(P)/kbuild)" > $(P)/module.tmp && mv $(P)/module.tmp $(P)/module

agent: | $(P)
	@cargo rustc --release -q -p dmalab-agent --target x86_64-unknown-linux-gnu -- -C target-feature=+crt-static
	@echo "$(CURDIR)/$(AGENT)" > $(P)/agent

initramfs: driver agent
	@scripts/build-initramfs.sh "$$(cat $(P)/kbuild)" "$$(cat $(P)/agent)" "$$(cat $(P)/module)" > $(P)/initramfs.tmp \
		&& mv $(P)/initramfs.tmp $(P)/initramfs

artifacts: qemu kernel device oracle initramfs

# make bench's guest: the test kernel's configuration without its debug options (lockdep,
# DMA-API debug, kmemleak), which production kernels do not have and which make mapping a page
# for DMA cost thousands of instructions (docs/performance.md); its own driver and initramfs.
BENCH_CONFIG := target/bench-kernel.config
bench-kernel: deps agent | $(P)
	@grep -vE '^CONFIG_(DMA_API_DEBUG|PROVE_LOCKING|DEBUG_KMEMLEAK[A-Z_]*)=' guest-kernel/dmalab.config > $(BENCH_CONFIG)
	@DMALAB_KERNEL_FRAGMENT=$(CURDIR)/$(BENCH_CONFIG) scripts/build-kernel.sh > $(P)/kbuild-bench.tmp \
		&& mv $(P)/kbuild-bench.tmp $(P)/kbuild-bench
	@echo "$$(cat $(P)/kbuild-bench)/arch/x86/boot/bzImage" > $(P)/kernel-bench
	@scripts/build-driver.sh "$$(cat $(P)/kbuild-bench)" "$(CURDIR)/target/kmod-bench" > $(P)/module-bench.tmp \
		&& mv $(P)/module-bench.tmp $(P)/module-bench
	@scripts/build-initramfs.sh "$$(cat $(P)/kbuild-bench)" "$$(cat $(P)/agent)" "$$(cat $(P)/module-bench)" \
		"$(CURDIR)/target/initramfs-bench" > $(P)/initramfs-bench.tmp && mv $(P)/initramfs-bench.tmp $(P)/initramfs-bench

run: artifacts
	@cargo run --release -q -p dmalab-harness --bin dmalab-run

unit:
	cargo test --release -p dmalab-abi -p dmalab-device -p dmalab-agent -p dmalab-ownership
	cargo test --release -p dmalab-harness --lib
	@echo "device tests again in a debug build (arithmetic overflow checks on)"
	cargo test -q -p dmalab-device

lint: lint-host lint-driver

# The host crates need no kernel: linted first, without waiting for its build.
lint-host:
	@python3 scripts/import-cycles.py
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -q -- -D warnings

lint-driver: kernel
	@scripts/lint-driver.sh "$$(cat $(P)/kbuild)"

# The streaming DMA abstraction's compile-fail examples (guest-driver/compile-fail/): each
# misuse the types rule out must fail to build with its documented error.
compile-fail: kernel
	@scripts/compile-fail.sh "$$(cat $(P)/kbuild)"

# VMS: how many VMs run at once (default: one per core; the harness holds them to it across
# every process, dmalab_harness::slots); the end prints where the time went.
VMS ?= $(shell nproc)
e2e: artifacts
	@rm -f target/e2e/timings.jsonl
	@t0=$$(date +%s); DMALAB_VMS=$(VMS) $(CARGO_E2E) -- --test-threads=$(VMS); rc=$$?; \
		echo "== make e2e: $$(( $$(date +%s) - t0 )) s with $(VMS) VM(s) at once"; \
		target/release/dmalab-timings; exit $$rc

test: lint-host unit loom-smoke fuzz-smoke miri-smoke lint-driver compile-fail e2e

# Coverage-guided fuzzing (cargo-fuzz, stable toolchain): FUZZ_SECONDS per target.
fuzz:
	@scripts/fuzz.sh $(or $(FUZZ_SECONDS),600) $(FUZZ_TARGETS)

fuzz-smoke:
	@scripts/fuzz.sh 10

# Miri on the device's unit tests (nightly; make test runs a smoke of the memory views and the
# control parser), and the device's tests under AddressSanitizer and ThreadSanitizer
# (SANITIZE_E2E=1: then the e2e transfer, hostile-guest and unbind suites with each sanitized
# server).
miri:
	@scripts/miri.sh

miri-smoke:
	@scripts/miri.sh --smoke

sanitize:
	@scripts/sanitize.sh

# loom: every interleaving (within its preemption bound) of the ownership table's seqlock
# (make test runs it) and of the map table's unmap protocol (make loom; it rebuilds the device
# crate, about 3 minutes).
loom-smoke:
	@echo "[dmalab] loom: the ownership table's seqlock"
	@RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -q --release \
		-p dmalab-ownership --test loom_seqlock

loom: loom-smoke
	@echo "[dmalab] loom: the map table's unmap protocol"
	@RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -q --release \
		-p dmalab-device --test loom_unmap

# The conformance suite of the kernel's Rust DMA abstraction (docs/conformance.md): every
# kernel::dma and scatterlist API against the device, under each platform condition; table,
# target/conformance/report.html, exit status. KERNEL_SRC=/path/to/tree: that tree (cached).
# KERNEL_SERIES=7.2: that series from the package mirror instead (built and cached beside 7.3).
# CONDITIONS="gentle;swiotlb": other sets of conditions.
conformance: artifacts
	@kb="$$(cat $(P)/kbuild)"; \
		if [ -n "$(KERNEL_SERIES)" ]; then kb=$$(DMALAB_KERNEL_SERIES=$(KERNEL_SERIES) scripts/build-kernel.sh) || exit 1; fi; \
		cargo run --release -q -p dmalab-harness --bin dmalab-conformance -- --kbuild "$$kb" \
		--run-name conformance$(if $(KERNEL_SERIES),-$(KERNEL_SERIES)) $(if $(CONDITIONS),--conditions "$(CONDITIONS)")

# Proof that the suite judges the abstraction: each patch of conformance/selftest/ breaks one
# rule of rust/kernel/dma.rs or scatterlist.rs and must fail exactly its expected APIs' tests
# (an incremental kernel rebuild per patch, cached; PATCHES=... for some of them).
conformance-selftest: artifacts
	@cargo build --release -q -p dmalab-harness --bin dmalab-conformance
	@scripts/conformance-selftest.sh "$$(cat $(P)/kbuild)" "$$(cat $(P)/agent)" $(PATCHES)

# The streaming abstraction as a kernel patch (kernel-patches/streaming/, docs/conformance.md):
# made from guest-driver/module/streaming.rs (BLESS=1 rewrites it), checkpatch.pl --strict
# clean, and a kernel built with it, rustdoc included (an incremental rebuild, cached).
kernel-patches: kernel
	@scripts/kernel-patches.sh "$$(cat $(P)/kbuild)"

# The kernel crate's doctests, the streaming patch's among them, as KUnit runs them at boot: a
# kernel of their own (the patched tree with KUnit and CONFIG_RUST_KERNEL_DOCTESTS; a full build).
kernel-doctests: kernel agent
	@out=$$(scripts/kernel-doctests.sh "$$(cat $(P)/kbuild)" "$$(cat $(P)/agent)") || exit 1; \
		cargo run --release -q -p dmalab-harness --bin dmalab-kernel-doctests -- \
		--kernel "$$(sed -n 1p <<<"$$out")" --initramfs "$$(sed -n 2p <<<"$$out")"

# A seeded fault campaign (docs/campaigns.md): SEED, OPS, RULES, JOBS (VMs side by side),
# SHARD=I/N (one slice; `dmalab-campaign merge` the shards), SERIAL=1, RESUME=1.
campaign: artifacts
	@cargo run --release -q -p dmalab-harness --bin dmalab-campaign -- --seed $(or $(SEED),1) --ops $(or $(OPS),300) \
		$(if $(RULES),--rules $(RULES)) --jobs $(or $(JOBS),1) $(if $(SHARD),--shard $(SHARD)) \
		$(if $(SERIAL),--serial) $(if $(RESUME),--resume) $(if $(DMA_MODE),--dma-mode $(DMA_MODE))

# docs/performance.md: the device library against memcpy, then one boot with dmalab, QEMU's
# NVMe and edu side by side, instruction counts, campaign throughput; then the oracle's cost.
# Figures: target/bench/*.json and the generated part of docs/performance.md.
bench: artifacts bench-kernel
	cargo bench -p dmalab-device --bench engine
	@cargo run --release -q -p dmalab-harness --bin dmalab-bench
	@$(MAKE) -s bench-oracle

# The driver's zero-copy path on the kernel's streaming module (kernel-patches/streaming/)
# against its own copy, in one boot of the patched production-like kernel (docs/performance.md).
bench-streaming: artifacts bench-kernel
	@out=$$(scripts/bench-streaming.sh "$$(cat $(P)/kbuild-bench)" "$$(cat $(P)/agent)") || exit 1; \
		cargo run --release -q -p dmalab-harness --bin dmalab-bench-streaming -- \
		--kernel "$$(sed -n 1p <<<"$$out")" --initramfs "$$(sed -n 2p <<<"$$out")"

# What the DMA ownership oracle costs: the same guest work with it off and on (docs/oracle.md).
bench-oracle: artifacts
	@cargo run --release -q -p dmalab-harness --bin dmalab-oracle-cost

# The tutorial ladder (docs/tutorial/): build every step's solution and skeleton.
exercises: kernel
	@for d in exercises/solutions/step* exercises/skeletons/step*; do \
		scripts/build-exercise.sh "$$(cat $(P)/kbuild)" "$$d" >/dev/null || exit 1; \
		echo "built $$d"; done

# Grade the reference driver (or DRIVER=...) RUNS times, AT_ONCE at a time: a correct driver
# passes every run on a loaded machine (scripts/check-soak.sh).
check-soak: artifacts
	@RUNS=$(RUNS) AT_ONCE=$(AT_ONCE) DRIVER=$(DRIVER) scripts/check-soak.sh

# Start a tutorial step: copies its skeleton to work/stepN/ (kept if it exists) and says what
# to do (docs/tutorial/README.md).
exercise:
	@scripts/exercise.sh $(STEP)

# Grade a tutorial module: make check-step STEP=N [DIR=module dir]. Default: your work/stepN/
# (make exercise), else the step's skeleton.
check-step: artifacts
	@[ -n "$(STEP)" ] || { echo "usage: make check-step STEP=N [DIR=module dir]"; exit 2; }
	@dir="$(or $(DIR),$(if $(wildcard work/step$(STEP)),work/step$(STEP),exercises/skeletons/step$(STEP)))"; \
		echo "[dmalab] grading $$dir as step $(STEP)"; \
		mkdir -p work && ln -sfn "$$(cat $(P)/kbuild)/source" work/linux; \
		ko=$$(scripts/build-exercise.sh "$$(cat $(P)/kbuild)" "$$dir") \
		&& target/release/dmalab-check --step $(STEP) --driver "$$ko"

clean:
	cargo clean
