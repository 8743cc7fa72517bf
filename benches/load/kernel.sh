#!/usr/bin/env bash
# The kernel path against the userspace relay, with the generator's own
# baseline (benches/load/direct.py) at each load, interleaved; one run each.
# Needs a release build with the feature:
#   cargo build --release --features kernel-relay
set -eu
cd "$(dirname "$0")/../.."
R=${RESULTS:-benches/load/results/kernel}
HOLD=${HOLD:-60}
py=(python3 benches/load/run.py --callrec target/release/callrec --generator callgen --autogroup-nice -10 --results "$R")
for n in ${STEPS:-200 1000}; do
  python3 benches/load/direct.py --calls "$n" --hold "$HOLD" --results "$R"
  "${py[@]}" series --stack callrec --steps "$n" --hold "$HOLD"
  "${py[@]}" --kernel-relay lo series --stack callrec --steps "$n" --hold "$HOLD"
done
