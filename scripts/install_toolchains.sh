#!/usr/bin/env bash
# Installs the non-Python toolchains `make stubs` and the client tests need, only what is
# missing (idempotent). Required: protoc + the gRPC C++ plugin + grpc++/protobuf headers, Node + npm.
# Go and Java are installed as groups, each in one apt-get call so apt picks compatible
# packages; a group Debian cannot provide is reported and skipped (gen_stubs.sh says so too).
set -euo pipefail

required_packages=(protobuf-compiler protobuf-compiler-grpc libgrpc++-dev libprotobuf-dev pkg-config g++)
# Go: Go 1.19, protoc-gen-go 1.28 (the google.golang.org/protobuf API) and protoc-gen-go-grpc,
# and the sources scripts/go_vendor_debian.sh vendors: grpc-go 1.33, protobuf-go 1.28,
# golang/protobuf 1.5 (1.3 is not built on protobuf-go; apt replaces it).
go_packages=(golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
             golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev)
# Java: the grpc-java 1.41 plugin, its jars, the netty transport and grpc-java's own runtime
# dependencies (perfmark, gson), and javac when no JDK is there.
java_packages=(protobuf-compiler-grpc-java-plugin libgrpc-java libprotobuf-java libnetty-java
               libperfmark-java libgoogle-gson-java libguava-java libgeronimo-annotation-1.3-spec-java)
if ! command -v javac >/dev/null; then
    java_packages+=(default-jdk-headless)
fi

missing_packages() {
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || echo "$package"
    done
}

apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "install_toolchains: need root to apt-get install: $*" >&2
        return 1
    fi
    # Refresh the package lists once per run, only when something is missing.
    if [[ -z ${APT_UPDATED:-} ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v apt-get >/dev/null; then
    echo "install_toolchains: apt-get not found; install these by hand:" \
        "${required_packages[*]} nodejs npm" >&2
    exit 1
fi

mapfile -t needed < <(missing_packages "${required_packages[@]}")
if ((${#needed[@]})); then
    echo "install_toolchains: installing ${needed[*]}"
    apt_install "${needed[@]}"
fi

install_group() {
    local group=$1 wanted
    shift
    mapfile -t wanted < <(missing_packages "$@")
    if ((${#wanted[@]})); then
        echo "install_toolchains: installing ($group) ${wanted[*]}"
        apt_install "${wanted[@]}" \
            || echo "install_toolchains: $group packages not installable, $group skipped" >&2
    fi
}
install_group go "${go_packages[@]}"
install_group java "${java_packages[@]}"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "install_toolchains: installing nodejs npm"
    apt_install nodejs npm
fi
