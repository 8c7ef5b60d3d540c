#!/usr/bin/env bash
# `make fuzz`: every cargo-fuzz target (fuzz/fuzz_targets/) for FUZZ_SECONDS
# each, starting from its corpus in fuzz/corpus/<target>/; fails when one
# crashes (the input is kept in fuzz/artifacts/<target>/).
#   FUZZ_SECONDS=600 make fuzz              longer (default 120 per target)
#   FUZZ_TARGETS="routes config" make fuzz  only those
#   FUZZ_MERGE=1 make fuzz                  then add the inputs that reach new
#                                           coverage to fuzz/corpus/ (commit them)
#   FUZZ_SANITIZER=address make fuzz        ASan (default none: safe Rust, 2x faster)
# New inputs of a run go to fuzz/target/corpus/<target>/, not the repo.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-120}
toolchain=${FUZZ_TOOLCHAIN:-nightly}
sanitizer=${FUZZ_SANITIZER:-none}
max_len=${FUZZ_MAX_LEN:-16384}

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
rustup run "$toolchain" rustc --version >/dev/null 2>&1 ||
  rustup toolchain install --profile minimal "$toolchain"
fuzz=(cargo "+$toolchain" fuzz)
build=(--sanitizer "$sanitizer" --debug-assertions)

targets=${FUZZ_TARGETS:-$("${fuzz[@]}" list)}
"${fuzz[@]}" build "${build[@]}"

declare -a failed=() rows=()
for t in $targets; do
  work=fuzz/target/corpus/$t
  mkdir -p "$work" "fuzz/artifacts/$t"
  log=fuzz/target/fuzz-$t.log
  echo "== $t: ${seconds}s"
  # New inputs go to the first directory; the repo's corpus is read.
  if "${fuzz[@]}" run "${build[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len="$max_len" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    failed+=("$t")
    grep -E "panicked|Test unit written|SUMMARY" "$log" | head -5 || true
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n1)
  rows+=("$(printf '%-13s %10s %6ss %7s  %s' "$t" "${runs:-?}" "${took:-?}" \
    "$(find "$work" "fuzz/corpus/$t" -type f | wc -l)" "$result")")
  if [ "${FUZZ_MERGE:-0}" = 1 ] && [ "$result" = ok ]; then
    "${fuzz[@]}" run "${build[@]}" "$t" "fuzz/corpus/$t" "$work" -- \
      -merge=1 -max_len="$max_len" >>"$log" 2>&1
  fi
done

printf '\n%-13s %10s %7s %7s  %s\n' target executions time inputs result
printf '%s\n' "${rows[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/; logs in fuzz/target/fuzz-*.log)" >&2
  exit 1
fi
