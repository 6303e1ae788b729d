# cyxwiz-node. `make run` and `make test` do all the set-up on a fresh machine
# (after .ci/run's apt/npm/go installs; see README.md).

GO        ?= go
BIN       := bin
LIB       := lib
CONFIG    ?= node.toml
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
export CGO_ENABLED := 1
# Where the Go sources are (gofmt's checks; git is not needed).
GO_DIRS   := cmd host hostfuncs guests loaders proto

# Tests find the native libraries under lib/ (see loaders/loadertest).
export CYXWIZ_LIB_DIR ?= $(CURDIR)/$(LIB)

.PHONY: all build deps proto proto-check guests run test bench bench-onnx bench-guests lint clean

all: build

## build: the daemon and the client into bin/
build:
	$(GO) build -o $(BIN)/cyxwiz-node ./cmd/cyxwiz-node
	$(GO) build -o $(BIN)/cyxwizctl ./cmd/cyxwizctl

## deps: pinned, checksummed native libraries and the demo model into lib/
deps:
	./scripts/deps.sh

## proto: regenerate the committed Go code from proto/ (protoc from Debian's protobuf-compiler)
proto:
	GOBIN=$(CURDIR)/$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(CURDIR)/$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	cd proto && PATH=$(CURDIR)/$(BIN):$$PATH protoc -I . -I /usr/include \
		--go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative \
		inference/grpc_service.proto cyxwiz/protocol/*.proto

## proto-check: fail if the committed generated code differs from `make proto`
proto-check: proto
	git diff --exit-code -- proto
	@test -z "$$(git ls-files --others --exclude-standard -- proto)" || { echo "generated but not committed:"; git ls-files --others --exclude-standard -- proto; exit 1; }

## guests: the example WebAssembly guests into guests/build/ (GOOS=wasip1)
guests:
	./guests/build.sh

## run: build, fetch deps, and serve the repo's node.toml in the foreground
run: deps build guests
	$(BIN)/cyxwiz-node serve -c $(CONFIG)

## test: everything, with the race detector where goroutines live
test: deps guests
	$(GO) vet ./...
	@out="$$(gofmt -l $(GO_DIRS))"; test -z "$$out" || { echo "gofmt -w these:"; echo "$$out"; exit 1; }
	$(GO) test -race -count=1 ./...

## bench: every benchmark target
bench: bench-onnx bench-guests

## bench-guests: guest pipeline vs native, call overhead, warm instantiate
bench-guests: deps guests
	$(GO) test -run '^$$' -bench BenchmarkGuests -benchtime 1x -count 1 ./host/guest/

## bench-onnx: ONNX serving path vs in-process reference (issue: ONNX/KServe slice)
bench-onnx: deps
	$(GO) test -run '^$$' -bench BenchmarkQueueDelay -benchtime 1x -count 1 ./host/engine/
	$(GO) test -run '^$$' -bench BenchmarkServing -benchtime 1x -count 1 ./host/server/

## lint: gofmt + go vet
lint:
	@out="$$(gofmt -l $(GO_DIRS))"; test -z "$$out" || { echo "gofmt -w these:"; echo "$$out"; exit 1; }
	$(GO) vet ./...

clean:
	rm -rf $(BIN)
