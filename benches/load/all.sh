#!/usr/bin/env bash
# Runs the whole load benchmark (BENCHMARKS.md, "Load: callrec vs
# Kamailio + rtpengine"): the step series of concurrent recorded calls for
# both stacks (alternating at each step, each stack until its first degraded
# step), then the signalling-only call-rate ladder for each. Results: one JSON
# per run in benches/load/results/. Needs a release build of callrec
# (CARGO_TARGET_DIR or target/), sipp, kamailio, rtpengine-daemon,
# rtpengine-recording-daemon, gcc, perf (optional). Takes about 25 minutes;
# the machine should be otherwise idle.
#
#   benches/load/all.sh [HOLD_SECONDS] [STEPS] [CPS_RATES]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
hold="${1:-60}"
steps="${2:-50,100,200,400,600,800}"
rates="${3:-100,200,300,400,600,800,1000,1500}"
bin="${CARGO_TARGET_DIR:-$here/../../target}/release/callrec"
py=(python3 "$here/run.py" --callrec "$bin")
"${py[@]}" --perf 10 --perf-at 200 series --stack both --steps "$steps" --hold "$hold" --stop-on-degrade
"${py[@]}" cps --stack callrec --rates "$rates"
"${py[@]}" cps --stack peer --rates "$rates"
