#!/usr/bin/env bash
# Downloads benchmarks/gpu_wheels.txt's wheels for the GPU machine (Python 3.12, x86-64 manylinux) into ignored
# folders .gpuj1, .gpuj2 ... of at most 62 MiB each, to `carry` beside ../shared/gpu/fetch_vllm_wheels.sh's .gpuK.
# usage (from the checkout the device calls send): bash benchmarks/fetch_gpu_wheels.sh [LIST]
set -eu
root=$(git rev-parse --show-toplevel)
list=$(readlink -f "${1:-$(dirname "$0")/gpu_wheels.txt}")
cd "$root"
exclude=$(git rev-parse --git-path info/exclude)  # a worktree's .git is a file
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.gpu*/' "$exclude" 2>/dev/null || echo '/.gpu*/' >> "$exclude"
dl=$(mktemp -d)
plats=""; for n in 5 12 17 24 26 27 28 31 34 35; do plats="$plats --platform manylinux_2_${n}_x86_64"; done
grep -v '^#' "$list" | grep -v '^$' | while read -r req; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none $plats --platform manylinux2014_x86_64 --platform any -d "$dl" "$req"
done
rm -rf .gpuj[0-9]*
n=1; size=0; mkdir -p .gpuj1
for w in $(ls -S "$dl"/*.whl); do   # largest first, a new folder when the next would pass 62 MiB
  s=$(stat -c %s "$w")
  if [ $((size + s)) -gt 65011712 ] && [ "$size" -gt 0 ]; then n=$((n + 1)); size=0; mkdir -p ".gpuj$n"; fi
  mv "$w" ".gpuj$n/"; size=$((size + s))
done
rm -rf "$dl"
du -sh .gpuj*
