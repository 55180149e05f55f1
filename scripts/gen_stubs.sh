#!/usr/bin/env bash
# `make stubs`: client code from protos/ for C++, Node, Go and Java under build/stubs/, the C++
# and Node camera examples built, and the protos checked with `buf lint` and `buf breaking`.
# Toolchains come from scripts/install_toolchains.sh (idempotent). A generator that cannot be
# installed is reported as skipped, never silently dropped; C++ and Node are required. Go and
# Java output is compiled as a check when Debian's toolchains are there. STUBS_QUICK=1 (the
# tests) skips that compile check and buf, which the tests run on their own.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=build/stubs
NODE_DIR=client/examples/node
CPP_DIR=client/examples/cpp
bash scripts/install_toolchains.sh

mapfile -t PROTOS < <(cd protos && find . -name '*.proto' -printf '%P\n' | sort)
rm -rf "$OUT"
mkdir -p "$OUT"/{cpp,go,java}
generated=()
skipped=()

echo "stubs: C++ (protoc $(protoc --version | cut -d' ' -f2), grpc_cpp_plugin)"
protoc -I protos --cpp_out="$OUT/cpp" --grpc_out="$OUT/cpp" \
    --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)" "${PROTOS[@]}"
make -s -C "$CPP_DIR"
generated+=("cpp -> $OUT/cpp (example: build/examples/cpp/edgefleet_camera)")

echo "stubs: Node (@grpc/grpc-js + @grpc/proto-loader; TypeScript types from proto-loader-gen-types)"
if [[ ! -d $NODE_DIR/node_modules ]] || [[ $NODE_DIR/package-lock.json -nt $NODE_DIR/node_modules ]]; then
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$NODE_DIR/node_modules"
fi
(cd "$NODE_DIR" && npm run -s gen-types -- "${PROTOS[@]}" >/dev/null)
generated+=("node -> $OUT/node (types; camera.js loads the .proto files at run time)")

if command -v protoc-gen-go >/dev/null && command -v protoc-gen-go-grpc >/dev/null; then
    echo "stubs: Go (Debian protoc-gen-go, protoc-gen-go-grpc)"
    # Debian's protoc-gen-go (1.3) takes one Go package per run: one run per directory.
    for dir in $(printf '%s\n' "${PROTOS[@]}" | xargs -n1 dirname | sort -u); do
        protoc -I protos --go_out="$OUT/go" --go_opt=paths=source_relative \
            --go-grpc_out="$OUT/go" --go-grpc_opt=paths=source_relative \
            $(printf '%s\n' "${PROTOS[@]}" | grep "^$dir/[^/]*$")
    done
    if [[ -z ${STUBS_QUICK:-} ]] && command -v go >/dev/null \
        && [[ -d /usr/share/gocode/src/google.golang.org/grpc ]]; then
        # GOPATH mode against Debian's Go packages: no module download, nothing leaves the box.
        gopath=$PWD/build/gopath
        package_dir=$gopath/src/github.com/edgefleet/edgefleet/gen/go
        rm -rf "$gopath" && mkdir -p "$(dirname "$package_dir")"
        ln -s "$PWD/$OUT/go" "$package_dir"
        (cd "$package_dir" && GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" \
            GOCACHE="$gopath/cache" go build ./...)
        generated+=("go -> $OUT/go (compiled: $(go version | cut -d' ' -f3), Debian grpc-go)")
    else
        generated+=("go -> $OUT/go (generated, not compiled: no Go toolchain, or STUBS_QUICK)")
    fi
else
    skipped+=("go: protoc-gen-go / protoc-gen-go-grpc not installable here")
fi

if command -v grpc_java_plugin >/dev/null; then
    echo "stubs: Java (protoc --java_out, Debian grpc_java_plugin)"
    protoc -I protos --java_out="$OUT/java" --grpc-java_out="$OUT/java" \
        --plugin=protoc-gen-grpc-java="$(command -v grpc_java_plugin)" "${PROTOS[@]}"
    # Debian's grpc-java; the generated code's @Generated comes from the annotation spec jar.
    jars=(/usr/share/java/{grpc-api,grpc-stub,grpc-protobuf,grpc-protobuf-lite,guava,protobuf}.jar
          /usr/share/java/geronimo-annotation-1.3-spec.jar)
    if [[ -z ${STUBS_QUICK:-} ]] && command -v javac >/dev/null && ls "${jars[@]}" >/dev/null 2>&1
    then
        classpath=$(IFS=:; echo "${jars[*]}")
        rm -rf build/classes/java && mkdir -p build/classes/java
        javac -nowarn -d build/classes/java -cp "$classpath" $(find "$OUT/java" -name '*.java')
        generated+=("java -> $OUT/java (compiled with $(javac -version 2>&1), Debian grpc-java)")
    else
        generated+=("java -> $OUT/java (generated, not compiled: no grpc-java jars, or STUBS_QUICK)")
    fi
else
    skipped+=("java: grpc_java_plugin (protobuf-compiler-grpc-java-plugin) not installable here")
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
