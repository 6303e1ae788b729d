#!/bin/sh
# Builds every example guest to guests/build/<name>.wasm (ABI v1 reactor
# modules: GOOS=wasip1 GOARCH=wasm, -buildmode=c-shared).
# Usage: guests/build.sh [out-dir]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/guests/build}
mkdir -p "$out"
cd "$root"
for dir in guests/examples/*/; do
	name=$(basename "$dir")
	echo "guests: $name"
	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -o "$out/$name.wasm" "./$dir"
done
