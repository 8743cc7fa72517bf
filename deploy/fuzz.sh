#!/usr/bin/env bash
# Builds and runs callrec's fuzz targets (fuzz/, see SECURITY.md) with
# cargo-fuzz on the nightly toolchain, one target after the other, and prints
# each target's executions. Any crash, timeout or leak fails the run; the
# reproducer is left in fuzz/artifacts/<target>/.
#   deploy/fuzz.sh                      # 30 s per target
#   deploy/fuzz.sh 1200                 # 20 min per target
#   deploy/fuzz.sh 0 10000000           # 10 million executions per target
#   deploy/fuzz.sh 60 0 sdp rtp         # only these targets
# Environment: FUZZ_JOBS (parallel fuzz jobs per target, default 1),
# FUZZ_NICE (nice level, default 0), FUZZ_LOG (summary file, default none),
# FUZZ_PROFILE (release, the default, or dev: builds in a fraction of the
# time and runs several times slower; test.sh's brief pass uses dev).
set -euo pipefail

cd "$(dirname "$0")/.."

seconds=${1:-30}
runs=${2:-0}
shift $(( $# > 2 ? 2 : $# ))
targets=("$@")
((${#targets[@]})) || targets=(sip_framer sip_parser sdp rtp recorder_timeline)

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz.sh: no nightly toolchain; cargo-fuzz needs one (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo +nightly install --locked cargo-fuzz
fi

python3 fuzz/seed.py

nice_cmd=(nice -n "${FUZZ_NICE:-0}")
case ${FUZZ_PROFILE:-release} in
release) profile=(--release) ;;
dev) profile=(--dev) ;;
*)
    echo "fuzz.sh: FUZZ_PROFILE is release or dev, not '$FUZZ_PROFILE'" >&2
    exit 2
    ;;
esac
# One build for all targets (the callrec library with only the fuzzing entry points added).
"${nice_cmd[@]}" cargo +nightly fuzz build "${profile[@]}"

status=0
for t in "${targets[@]}"; do
    args=(-max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    ((seconds > 0)) && args+=("-max_total_time=$seconds")
    ((runs > 0)) && args+=("-runs=$runs")
    if [[ ${FUZZ_JOBS:-1} -gt 1 ]]; then
        args+=("-jobs=$FUZZ_JOBS" "-workers=$FUZZ_JOBS")
    fi
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log=$(mktemp)
    started=$(date -u +%Y-%m-%dT%H:%MZ)
    if "${nice_cmd[@]}" cargo +nightly fuzz run "${profile[@]}" "$t" "fuzz/corpus/$t" \
        -- "${args[@]}" -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        status=1
        tail -n 60 "$log" >&2
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
    line="$t: ${execs:-?} executions, started $started, $result"
    echo "fuzz.sh: $line"
    [[ -n ${FUZZ_LOG:-} ]] && echo "$line" >>"$FUZZ_LOG"
    rm -f "$log"
done
exit $status
