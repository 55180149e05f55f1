#!/usr/bin/env bash
# Builds the Java camera with javac against Debian's grpc-java 1.41 and protobuf-java 3.21 jars
# (no Maven or Gradle: their plugins are not in Debian in versions that build offline).
# Needs the Java stubs from `make stubs` in build/stubs/java. Writes
# build/examples/java/classes and the launcher build/examples/java/edgefleet_camera.
# Incremental: nothing is compiled when the classes are newer than every source.
set -euo pipefail
cd "$(dirname "$0")/../../.."
STUBS=build/stubs/java
OUT=build/examples/java
JARS=/usr/share/java
# Compile: the generated code and the example. javax.annotation.Generated: geronimo spec jar.
compile_jars=(grpc-api grpc-core grpc-stub grpc-protobuf grpc-protobuf-lite grpc-netty guava
              protobuf geronimo-annotation-1.3-spec)
# Run: grpc-java's own dependencies (context, perfmark, gson for service configs) and netty.
runtime_jars=(grpc-context perfmark-api gson netty-buffer netty-codec netty-codec-http
              netty-codec-http2 netty-codec-socks netty-common netty-handler netty-handler-proxy
              netty-resolver netty-transport)
classpath() { local jar; for jar in "$@"; do printf '%s:' "$JARS/$jar.jar"; done; }
for jar in "${compile_jars[@]}" "${runtime_jars[@]}"; do
    [[ -f $JARS/$jar.jar ]] || { echo "java camera: missing $JARS/$jar.jar" >&2; exit 1; }
done
[[ -d $STUBS/io/edgefleet ]] || { echo "java camera: no stubs in $STUBS: run make stubs" >&2; exit 1; }

mapfile -t sources < <(find "$STUBS" client/examples/java -name '*.java' | sort)
stamp=$OUT/classes/.built
if [[ -f $stamp ]] && [[ -z $(find "${sources[@]}" -newer "$stamp" | head -1) ]]; then
    exit 0
fi
rm -rf "$OUT/classes" && mkdir -p "$OUT/classes"
javac -nowarn -encoding UTF-8 -d "$OUT/classes" -cp "$(classpath "${compile_jars[@]}")" "${sources[@]}"
touch "$stamp"
cat >"$OUT/edgefleet_camera" <<LAUNCHER
#!/bin/sh
# Written by client/examples/java/build.sh.
exec java -cp "$PWD/$OUT/classes:$(classpath "${compile_jars[@]}" "${runtime_jars[@]}")" \\
    io.edgefleet.examples.Camera "\$@"
LAUNCHER
chmod +x "$OUT/edgefleet_camera"
echo "java camera: built $OUT/edgefleet_camera"
