#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for a bounded time.
#
#   tests/fuzz/run_fuzzers.sh BUILD_DIR
#
#   fuzz_config      config text -> parseSettingsFromText (src/config; no LibTorch)
#   fuzz_checkpoint  pickle walker, safetensors reader, torch.save zip (links LibTorch)
#
# Env: FUZZ_SECONDS (default 60) per target, 0 = replay the corpora only; CXX (default clang++-14, else clang++);
# FUZZ_TARGETS (default "fuzz_config fuzz_checkpoint"). The targets need only their own
# sources, not the project build; they are rebuilt when a source is newer. Seeds: the
# malformed config corpus and configs/*.json (each behind a mode byte, see fuzz_config.cpp),
# tests/fuzz/corpus_checkpoint/. New inputs collect in BUILD_DIR/corpus_<target>/, findings in
# BUILD_DIR/artifacts/. Exit 0: no finding; 1: a finding or a failed build; 77: no clang with
# libFuzzer (apt-get install clang-14 libclang-rt-14-dev).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
[ $# -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
build=$(mkdir -p "$1" && cd "$1" && pwd)
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-fuzz_config fuzz_checkpoint}
cxx=${CXX:-}
if [ -z "$cxx" ]; then
  cxx=$(command -v clang++-14 || command -v clang++ || true)
fi
if [ -z "$cxx" ] || ! echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' |
    "$cxx" -x c++ -fsanitize=fuzzer - -o "$build/.probe" 2>/dev/null; then
  echo "run_fuzzers: SKIP: no clang++ with libFuzzer (install clang-14 libclang-rt-14-dev)"
  exit 77
fi
rm -f "$build/.probe"

# LibTorch for fuzz_checkpoint: the .venv torch wheel (the primary build's, C++20), else
# Debian's 1.13 (whose headers clang compiles only as C++17).
torch_root=$(ls -d "$root"/.venv/lib/python3*/site-packages/torch 2>/dev/null | head -1 || true)
if [ -n "$torch_root" ] && [ -d "$torch_root/include" ]; then
  std=c++20
  torch_libs="-isystem $torch_root/include -isystem $torch_root/include/torch/csrc/api/include
    -L$torch_root/lib -ltorch_cpu -lc10 -Wl,-rpath,$torch_root/lib"
else
  std=c++17
  torch_libs="-isystem /usr/include/torch/csrc/api/include -ltorch_cpu -lc10"
fi
# shellcheck disable=SC2054  # the commas belong to -fsanitize
flags=(-std=$std -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -D_GLIBCXX_USE_CXX11_ABI=1 -I"$root/src")
src="$root/src"
declare -A sources libs
sources[fuzz_config]="$root/tests/fuzz/fuzz_config.cpp $src/config/config_loader.cpp
  $src/config/config_file.cpp $src/config/options.cpp $src/io/json_reader.cpp
  $src/common/error.cpp"
libs[fuzz_config]=""
sources[fuzz_checkpoint]="$root/tests/fuzz/fuzz_checkpoint.cpp $src/torchfile/pickle_walker.cpp
  $src/checkpoint/safetensors.cpp $src/checkpoint/torch_zip_checkpoint.cpp
  $src/checkpoint/tensor_bytes.cpp $src/checkpoint/key_match.cpp $src/checkpoint/zip_patch.cpp
  $src/io/json_reader.cpp $src/common/error.cpp"
libs[fuzz_checkpoint]="$torch_libs -lz"

for t in $targets; do
  bin="$build/$t"
  # Rebuild when the binary is missing or older than any source or header it may use.
  if [ ! -x "$bin" ] || [ -n "$(find "$root/tests/fuzz" "$src/config" "$src/checkpoint" "$src/torchfile" "$src/stats" "$src/io" "$src/data" "$src/comm" \
        "$src/common" -newer "$bin" \( -name '*.cpp' -o -name '*.h' \) | head -1)" ]; then
    echo "run_fuzzers: building $t with $cxx"
    # shellcheck disable=SC2086  # word splitting of the source and library lists is wanted
    "$cxx" "${flags[@]}" ${sources[$t]} ${libs[$t]} -o "$bin.tmp"
    mv "$bin.tmp" "$bin"
  fi
done

# Seeds, rebuilt every run (cheap): configs get the mode byte fuzz_config reads first.
seeds_config="$build/seeds_fuzz_config"
rm -rf "$seeds_config" && mkdir -p "$seeds_config"
for f in "$root"/tests/configs/malformed/*.json "$root"/tests/configs/*.json "$root"/configs/*.json; do
  [ -f "$f" ] || continue
  b=$(basename "$f")
  { printf '\001'; cat "$f"; } > "$seeds_config/model_data_$b"
  { printf '\003'; cat "$f"; } > "$seeds_config/all_flags_$b"
done
seeds_checkpoint="$root/tests/fuzz/corpus_checkpoint"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS=suppressions=$root/tests/sanitizers/lsan.supp
mkdir -p "$build/artifacts"
status=0
for t in $targets; do
  corpus="$build/corpus_$t"
  mkdir -p "$corpus"
  seeds=$seeds_config
  [ "$t" = fuzz_checkpoint ] && seeds=$seeds_checkpoint
  log="$build/$t.log"
  rc=0
  if [ "$seconds" = 0 ]; then  # replay the corpora only: every seed and saved input once
    echo "run_fuzzers: $t: replaying its corpus (log: $log)"
    budget=(-runs=0)
  else
    echo "run_fuzzers: $t for ${seconds}s (log: $log)"
    budget=(-max_total_time="$seconds")
  fi
  "$build/$t" "${budget[@]}" -rss_limit_mb=2048 -max_len=65536 -timeout=25 \
      -error_exitcode=86 -timeout_exitcode=87 -print_final_stats=1 \
      -artifact_prefix="$build/artifacts/$t-" "$corpus" "$seeds" > "$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  echo "run_fuzzers: $t: exit $rc, ${execs:-?} executions, $(find "$corpus" -type f | wc -l) inputs in its corpus"
  if [ "$rc" -ne 0 ]; then
    status=1
    echo "run_fuzzers: FINDING in $t:"
    grep -E "ERROR|FINDING|SUMMARY|uncaught|Test unit written|==[0-9]+==" "$log" | head -20 || true
    tail -40 "$log"
  fi
done
[ "$status" -eq 0 ] && echo "run_fuzzers: no findings"
exit "$status"
