#!/usr/bin/env bash
# Installs the non-Python toolchains `make stubs` needs, only what is missing (idempotent).
# Required: protoc + the gRPC C++ plugin + grpc++/protobuf headers (Debian packages), Node 20 + npm.
# Optional: the Go and Java gRPC generators and the libraries to compile their output; when
# Debian cannot provide them gen_stubs.sh says plainly what it skips.
set -euo pipefail

required_packages=(protobuf-compiler protobuf-compiler-grpc libgrpc++-dev libprotobuf-dev pkg-config g++)
# protoc-gen-go (APIv1, which still carries the grpc plugin), protoc-gen-go-grpc, grpc-java plugin.
optional_packages=(golang-goprotobuf-dev protoc-gen-go-grpc protobuf-compiler-grpc-java-plugin)
# To compile the Go and Java stubs as a check (Debian's Go 1.19 in GOPATH mode, grpc-java 1.41).
# STUBS_QUICK (the tests) skips them: they only prove the generated code builds.
if [[ -z ${STUBS_QUICK:-} ]]; then
    optional_packages+=(golang-go golang-google-grpc-dev golang-google-protobuf-dev
                        libgrpc-java libprotobuf-java)
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

mapfile -t wanted < <(missing_packages "${optional_packages[@]}")
for package in "${wanted[@]}"; do
    # One at a time: a missing optional generator must not block the required ones.
    apt_install "$package" || echo "install_toolchains: optional $package not installable, skipped"
done

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "install_toolchains: installing nodejs npm"
    apt_install nodejs npm
fi
