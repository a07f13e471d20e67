# nvblk — see README.md. The two commands: `make run` and `make test`.
GO      ?= go
BIN     := bin/nvblk
IMG     ?= nvblk.img
SOCK    ?= nvblk.sock

.PHONY: all build run test test-migration migration-tests deps vet bench bench-compare fuzz fuzz-smoke clean install

all: build

build:
	$(GO) build -o $(BIN) ./cmd/nvblk

deps:
	./scripts/install-deps.sh

# run formats the default emulated-NVDIMM image on first use and serves it.
run: build
	@[ -f $(IMG) ] || ./$(BIN) format $(IMG) --size 1G --sector-size 4096
	./$(BIN) serve --socket-path $(SOCK) --blk-file $(IMG)

vet:
	$(GO) vet ./...
	$(GO) vet -tags migration ./qemu-tests/migration/
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	 if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi

test: deps vet
	$(GO) test -race -count=1 -timeout 30m ./...
	@# Allocation counts mean nothing under -race: the zero-allocation data
	@# path is checked in a plain build.
	$(GO) test -count=1 -run 'AllocsPerRequest' ./vhostuser/frontend/loadgen/
	@# The crash explorations are sequential, so -race finds nothing in them
	@# and slows them tenfold: under -race they try every third crash point
	@# with two images, and here every point with every image.
	$(GO) test -count=1 -run 'PowerLoss|ProcessCrash|CrashAtEvery' ./btt/
	@$(MAKE) --no-print-directory fuzz-smoke
	@$(MAKE) --no-print-directory migration-tests

# The live-migration tests (qemu-tests/migration, build tag migration) run
# on their own, after everything else: under TCG, QEMU 7.2 drops guest
# writes from a migration stream far more often on a loaded host (see that
# package's documentation). test-migration runs only them.
migration-tests:
	$(GO) test -race -count=1 -tags migration -timeout 20m ./qemu-tests/migration/

test-migration: deps migration-tests

# fuzz runs every fuzz target for FUZZTIME each (one package and target per
# `go test -fuzz`). New crashers land in the package's
# testdata/fuzz/<target>/ and then run as ordinary tests.
FUZZTIME ?= 60s
FUZZ_TARGETS := ./vhostuser/:FuzzDecodeMessage ./virtq/:FuzzNext ./vhost/blk/:FuzzHandle ./btt/:FuzzOpen ./virtq/:FuzzNextPacked ./nbd/:FuzzOptionParser ./nbd/:FuzzRequestParser ./nbd/:FuzzClientReplies

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t##*:}; \
	  echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

# fuzz-smoke, run by `make test`, gives each target a number of executions
# (about 5 s each on a 2-core box) rather than a duration: with a duration,
# Go 1.26's fuzz coordinator can report its own stop as a failure, "context
# deadline exceeded" with no crasher (go.dev/issue/75804, fixed in 1.27).
FUZZ_SMOKE := ./vhostuser/:FuzzDecodeMessage:250000x ./virtq/:FuzzNext:200000x ./vhost/blk/:FuzzHandle:400000x ./btt/:FuzzOpen:1000x ./virtq/:FuzzNextPacked:150000x ./nbd/:FuzzOptionParser:100000x ./nbd/:FuzzRequestParser:100000x

fuzz-smoke:
	@set -e; for t in $(FUZZ_SMOKE); do \
	  pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; n=$${rest##*:}; \
	  echo "fuzz $$name ($$pkg) for $$n"; \
	  $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $$n $$pkg; \
	done

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./btt/ ./pmem/

# bench-compare measures nvblk against qemu-storage-daemon (a few minutes).
bench-compare: build
	./scripts/bench-compare.sh

# install puts the binary, its vhost-user backend description (QEMU's
# docs/interop/vhost-user.json: management software finds the backend
# there) and the systemd units under $(DESTDIR)$(PREFIX), with the installed
# binary's path written into the description and the service.
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share
UNITDIR ?= $(PREFIX)/lib/systemd/system

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/nvblk
	install -d $(DESTDIR)$(DATADIR)/qemu/vhost-user $(DESTDIR)$(UNITDIR)
	sed 's|"binary": *"[^"]*"|"binary": "$(BINDIR)/nvblk"|' contrib/vhost-user/50-nvblk.json \
		> $(DESTDIR)$(DATADIR)/qemu/vhost-user/50-nvblk.json
	sed 's|^ExecStart=[^ ]*|ExecStart=$(BINDIR)/nvblk|' contrib/systemd/nvblk@.service > $(DESTDIR)$(UNITDIR)/nvblk@.service
	install -m 0644 contrib/systemd/nvblk@.socket $(DESTDIR)$(UNITDIR)/nvblk@.socket
	chmod 0644 $(DESTDIR)$(DATADIR)/qemu/vhost-user/50-nvblk.json $(DESTDIR)$(UNITDIR)/nvblk@.service

clean:
	rm -rf bin
