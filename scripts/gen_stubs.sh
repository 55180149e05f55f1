#!/usr/bin/env bash
# `make stubs`: client code from protos/ for C++, Node, Go and Java, the camera example of each
# built, and the protos checked with `buf lint` and `buf breaking`.
#   C++   build/stubs/cpp   -> build/examples/cpp/edgefleet_camera
#   Node  build/stubs/node (types; camera.js loads the .proto files at run time)
#   Go    client/go/gen (the Go module's own packages) -> build/examples/go/edgefleet_camera
#   Java  build/stubs/java  -> build/examples/java/edgefleet_camera
# Toolchains come from scripts/install_toolchains.sh (idempotent). C++ and Node are required; a
# Go or Java toolchain Debian cannot provide is reported as skipped, never silently dropped.
# Generated files are replaced only when their content changes, so the builds stay incremental.
# STUBS_QUICK=1 (the tests) skips buf, which the tests run as tests of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=build/stubs
NODE_DIR=client/examples/node
CPP_DIR=client/examples/cpp
GO_DIR=client/go
bash scripts/install_toolchains.sh

mapfile -t PROTOS < <(cd protos && find . -name '*.proto' -printf '%P\n' | sort)
generated=()
skipped=()
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# Moves freshly generated files from $1 into $2, touching only files whose content changed and
# deleting files no longer generated.
sync_tree() {
    local from=$1 to=$2 file
    mkdir -p "$to"
    (cd "$from" && find . -type f -printf '%P\n') | while read -r file; do
        if ! cmp -s "$from/$file" "$to/$file"; then
            mkdir -p "$(dirname "$to/$file")"
            cp "$from/$file" "$to/$file"
        fi
    done
    (cd "$to" && find . -type f -printf '%P\n') | while read -r file; do
        [[ -e $from/$file ]] || rm -f "$to/$file"
    done
}

echo "stubs: C++ (protoc $(protoc --version | cut -d' ' -f2), grpc_cpp_plugin)"
mkdir -p "$scratch/cpp"
protoc -I protos --cpp_out="$scratch/cpp" --grpc_out="$scratch/cpp" \
    --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)" "${PROTOS[@]}"
sync_tree "$scratch/cpp" "$OUT/cpp"
make -s -C "$CPP_DIR"
generated+=("cpp -> $OUT/cpp (example: build/examples/cpp/edgefleet_camera)")

echo "stubs: Node (@grpc/grpc-js + @grpc/proto-loader; TypeScript types from proto-loader-gen-types)"
if [[ ! -d $NODE_DIR/node_modules ]] || [[ $NODE_DIR/package-lock.json -nt $NODE_DIR/node_modules ]]; then
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$NODE_DIR/node_modules"
fi
(cd "$NODE_DIR" && npm run -s gen-types -- "${PROTOS[@]}" >/dev/null)
generated+=("node -> $OUT/node (types; camera.js loads the .proto files at run time)")

if command -v go >/dev/null && command -v protoc-gen-go >/dev/null \
    && command -v protoc-gen-go-grpc >/dev/null; then
    echo "stubs: Go (protoc-gen-go $(protoc-gen-go --version | cut -d' ' -f2)," \
        "protoc-gen-go-grpc; module $GO_DIR, vendored from Debian)"
    # go_package is edgefleet/client/go/gen/...: paths=source_relative puts each file there.
    mkdir -p "$scratch/go"
    protoc -I protos --go_out="$scratch/go" --go_opt=paths=source_relative \
        --go-grpc_out="$scratch/go" --go-grpc_opt=paths=source_relative "${PROTOS[@]}"
    sync_tree "$scratch/go" "$GO_DIR/gen"
    # The vendor tree is rebuilt only when go.mod or the module's imports may have changed.
    if [[ ! -f $GO_DIR/vendor/modules.txt || $GO_DIR/go.mod -nt $GO_DIR/vendor/modules.txt
          || -n $(find "$GO_DIR" -name '*.go' -not -path "$GO_DIR/vendor/*" \
                  -newer "$GO_DIR/vendor/modules.txt" | head -1) ]]; then
        bash scripts/go_vendor_debian.sh "$GO_DIR"
    fi
    # Every generated package (FrameStream, KServe v2, fleet) compiles; then the camera binary.
    (cd "$GO_DIR" && export GOFLAGS=-mod=vendor GOPROXY=off GOCACHE="$ROOT/build/go/cache" \
        && go build ./... && go build -o "$ROOT/build/examples/go/edgefleet_camera" ./cmd/camera)
    generated+=("go -> $GO_DIR/gen (example: build/examples/go/edgefleet_camera, $(go version | cut -d' ' -f3))")
else
    skipped+=("go: go / protoc-gen-go / protoc-gen-go-grpc not installable here")
fi

if command -v grpc_java_plugin >/dev/null && command -v javac >/dev/null; then
    echo "stubs: Java (protoc --java_out, Debian grpc_java_plugin; javac against Debian's jars)"
    mkdir -p "$scratch/java"
    protoc -I protos --java_out="$scratch/java" --grpc-java_out="$scratch/java" \
        --plugin=protoc-gen-grpc-java="$(command -v grpc_java_plugin)" "${PROTOS[@]}"
    sync_tree "$scratch/java" "$OUT/java"
    bash client/examples/java/build.sh
    generated+=("java -> $OUT/java (example: build/examples/java/edgefleet_camera, $(javac -version 2>&1))")
else
    skipped+=("java: grpc_java_plugin (protobuf-compiler-grpc-java-plugin) or javac not installable here")
fi

BUF=$NODE_DIR/node_modules/.bin/buf
if [[ -n ${STUBS_QUICK:-} ]]; then
    # The tests build the stubs with this set and run buf lint / breaking as tests of their own.
    skipped+=("buf lint and breaking: STUBS_QUICK is set")
else
    echo "stubs: buf lint protos"
    "$BUF" lint protos
    if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:protos 2>/dev/null; then
        echo "stubs: buf breaking protos against HEAD~1"
        "$BUF" breaking protos --against ".git#ref=HEAD~1,subdir=protos"
    else
        skipped+=("buf breaking: no previous commit with protos/ (shallow clone?)")
    fi
fi

printf 'generated: %s\n' "${generated[@]}"
if ((${#skipped[@]})); then
    printf 'skipped: %s\n' "${skipped[@]}"
fi
