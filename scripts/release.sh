#!/usr/bin/env bash
# The binaries that travel: stripped, statically linked (musl) single files for x86-64 and
# aarch64, built with cargo-zigbuild (zig, from PyPI, is the C/C++ cross compiler for
# RocksDB), into dist/ as mycelium-<target>. Then checks what a person will meet:
#  - each binary is static and at most 30 MB;
#  - the x86-64 one runs the end-to-end demo on a baseline x86-64 CPU with no AVX
#    (qemu-x86_64 -cpu qemu64: the fast paths must stay behind run-time detection);
#  - the aarch64 one runs the end-to-end demo under qemu-aarch64 (Debian's qemu-user).
# Prints a table: size, link, demo wall time under emulation, and the script's time.
#
#   bash scripts/release.sh                 # build both, check both
#   bash scripts/release.sh --no-demo       # build and check size and linking only
#   TARGETS=aarch64-unknown-linux-musl bash scripts/release.sh
#
# Publish the result as a signed release that travels like any bundle:
#   mycelium release publish dist/ --version X.Y.Z --notes "..."
# Not run in CI (two cross builds take the best part of an hour on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
demo=1
[ "${1:-}" = "--no-demo" ] && demo=0
targets=(${TARGETS:-x86_64-unknown-linux-musl aarch64-unknown-linux-musl})
limit=$((30 * 1000 * 1000))

# Tools: the Rust standard library for each target, zig and cargo-zigbuild, qemu-user.
bash scripts/setup.sh   # libclang (bindgen), and the models the demo runs
for t in "${targets[@]}"; do
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done
command -v cargo-zigbuild >/dev/null && python3 -m ziglang version >/dev/null 2>&1 ||
  python3 -m pip install -q ziglang==0.17.1 cargo-zigbuild==0.24.1
if ! command -v qemu-aarch64 >/dev/null || ! command -v qemu-x86_64 >/dev/null ||
   ! command -v file >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user file >/dev/null
fi

mkdir -p dist
target_dir=${CARGO_TARGET_DIR:-target}
for t in "${targets[@]}"; do
  echo "== building $t (profile dist: stripped, thin LTO)"
  t0=$(date +%s)
  cargo zigbuild --locked --profile dist --target "$t" --bin mycelium
  cp "$target_dir/$t/dist/mycelium" "dist/mycelium-$t"
  echo "   built in $(( $(date +%s) - t0 )) s"
done

status=0
rows=()
for t in "${targets[@]}"; do
  f="dist/mycelium-$t"
  size=$(stat -c %s "$f")
  link=$(file -b "$f" | grep -o 'static-pie linked\|statically linked\|dynamically linked' || echo "?")
  ok=yes
  case "$link" in static*|statically*) ;; *) ok=no; status=1 ;; esac
  [ "$size" -le "$limit" ] || { ok=no; status=1; }
  case "$t" in
    x86_64-*) emu=(qemu-x86_64 -cpu qemu64) ;;
    aarch64-*) emu=(qemu-aarch64) ;;
    *) emu=() ;;
  esac
  took="-"
  if [ "$demo" = 1 ] && [ ${#emu[@]} -gt 0 ]; then
    echo "== the demo on $t under ${emu[*]}"
    t0=$(date +%s)
    # Inference under emulation is some 10-50x slower: the tasks get 30 minutes.
    if "${emu[@]}" "$f" --json demo --task-limit 30m > "dist/demo-$t.json" 2> "dist/demo-$t.log"; then
      took="$(( $(date +%s) - t0 )) s"
    else
      took="FAILED (dist/demo-$t.log)"; ok=no; status=1
    fi
  fi
  rows+=("$(printf '%-28s %10s B  %-18s demo: %-12s ok: %s' "$t" "$size" "$link" "$took" "$ok")")
done
echo
echo "dist/ (limit $limit B each):"
printf '  %s\n' "${rows[@]}"
( cd dist && sha256sum mycelium-* > SHA256SUMS )
echo "release script took $(( $(date +%s) - start )) s"
exit $status
