#!/usr/bin/env bash
# Installs the non-Python toolchains `make stubs` needs, only what is missing (idempotent).
# Required: protoc + the gRPC C++ plugin + grpc++/protobuf headers (Debian packages), Node 20 + npm.
# Optional: the Go and Java gRPC generators; when Debian cannot provide them gen_stubs.sh says
# plainly that it skips them.
set -euo pipefail

required_packages=(protobuf-compiler protobuf-compiler-grpc libgrpc++-dev libprotobuf-dev pkg-config g++)
# protoc-gen-go (APIv1, which still carries the grpc plugin), protoc-gen-go-grpc, grpc-java plugin.
optional_packages=(golang-goprotobuf-dev protoc-gen-go-grpc protobuf-compiler-grpc-java-plugin)

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
