#!/usr/bin/env bash
# Fills client/go/vendor/ from Debian's Go source packages (/usr/share/gocode/src) so that the
# Go module builds with `-mod=vendor` and no network: the Go module proxy is not reachable here.
#
# Why vendoring and not `replace` into /usr/share/gocode: Debian's grpc-go 1.33 declares
# `go 1.11`, so Go loads its whole, unpruned requirement graph (envoyproxy/go-control-plane,
# cncf/udpa, ...), modules Debian does not ship, and fails offline. In vendor mode Go reads only
# go.mod and vendor/modules.txt, so exactly the packages the module imports are copied.
#
# go.mod is the source of truth for versions; each one is checked against the installed Debian
# package so a mismatch fails loudly instead of building against something else.
# Usage: scripts/go_vendor_debian.sh [MODULE_DIR]   (default client/go)
set -euo pipefail
cd "$(dirname "$0")/.."
module_dir=$(realpath "${1:-client/go}")
gocode=/usr/share/gocode/src
build=$PWD/build/go

module=$(awk '$1 == "module" {print $2}' "$module_dir/go.mod")
# Every `path vX` line of the require blocks (go 1.17+ lists indirect modules too).
mapfile -t requires < <(awk '/^require \(/ {inside = 1; next} inside && /^\)/ {inside = 0}
    inside && $2 ~ /^v/ {print $1, $2} /^require [^(]/ {print $2, $3}' "$module_dir/go.mod")

# Debian's version of each module must be the one go.mod names.
for line in "${requires[@]}"; do
    read -r path version <<<"$line"
    # go.mod belongs to exactly one package (a directory can be shared by several).
    package=$(dpkg-query -S "$gocode/$path/go.mod" 2>/dev/null | head -1 | cut -d: -f1) || true
    if [[ -z $package ]]; then
        echo "go_vendor_debian: no Debian package provides $gocode/$path ($path $version)" >&2
        exit 1
    fi
    debian=$(dpkg-query -W -f='${Version}' "$package")
    upstream=${debian#*:}          # drop the epoch
    upstream=${upstream%-*}        # drop the Debian revision
    upstream=${upstream%+dfsg*}    # drop the repack suffix
    if [[ $version =~ ^v0\.0\.0-[0-9]{14}-([0-9a-f]{7}) ]]; then
        expected="git.*\\.${BASH_REMATCH[1]}"    # pseudo-version: same commit (0.0~gitDATE.HASH)
    else
        expected=${version#v}
    fi
    if ! [[ $upstream =~ ^(0\.0~)?${expected}$ ]]; then
        echo "go_vendor_debian: go.mod wants $path $version, Debian's $package is $debian;" \
            "update $module_dir/go.mod to match" >&2
        exit 1
    fi
done

# The packages the module imports, listed in GOPATH mode against Debian's tree (no network).
# GOPATH mode would read an old vendor/ directory, so it goes first.
rm -rf "$module_dir/vendor"
gopath=$build/gopath
mkdir -p "$gopath/src/$(dirname "$module")"
ln -sfn "$module_dir" "$gopath/src/$module"
mapfile -t packages < <(cd "$gopath/src/$module" && GO111MODULE=off GOFLAGS= \
    GOPATH="$gopath:/usr/share/gocode" GOCACHE="$build/cache" \
    go list -deps -f '{{if not .Standard}}{{.ImportPath}}{{end}}' ./... | grep -v "^$module/" \
    | grep -v "^$module\$" | sort -u)

mkdir -p "$module_dir/vendor"
{
    for line in "${requires[@]}"; do
        read -r path version <<<"$line"
        go_version=$(awk '$1 == "go" {print $2; exit}' "$gocode/$path/go.mod" 2>/dev/null || true)
        echo "# $path $version"
        echo "## explicit${go_version:+; go $go_version}"
        for file in LICENSE PATENTS; do
            if [[ -f $gocode/$path/$file ]]; then
                mkdir -p "$module_dir/vendor/$path"
                cp "$gocode/$path/$file" "$module_dir/vendor/$path/"
            fi
        done
        for package in "${packages[@]}"; do
            # The package belongs to this module unless a longer required path also matches.
            [[ $package == "$path" || $package == "$path"/* ]] || continue
            owner=$path
            for other in "${requires[@]}"; do
                other=${other%% *}
                if [[ ${#other} -gt ${#owner} && ($package == "$other" || $package == "$other"/*) ]]
                then
                    owner=$other
                fi
            done
            [[ $owner == "$path" ]] || continue
            echo "$package"
            mkdir -p "$module_dir/vendor/$package"
            find "$gocode/$package" -maxdepth 1 -type f ! -name '*_test.go' \
                -exec cp {} "$module_dir/vendor/$package/" \;
        done
    done
} >"$module_dir/vendor/modules.txt"

# A package no required module owns means go.mod is missing a requirement.
for package in "${packages[@]}"; do
    grep -qx "$package" "$module_dir/vendor/modules.txt" || {
        echo "go_vendor_debian: $package is imported but no module in go.mod provides it" >&2
        exit 1
    }
done
echo "go_vendor_debian: vendored ${#packages[@]} packages from Debian into $module_dir/vendor"
