#!/usr/bin/env bash
# Model-checks the ring's atomics with loom (src/ring/loom_tests.rs): the
# record queue, the release queue and the sleep/wake protocol, over the real
# Producer/Consumer/ReleaseProducer/ReleaseConsumer/Sleeper/Waker.
#
# Builds with `--cfg loom` in a target directory of its own, since that flag
# rebuilds every dependency. LOOM_MAX_PREEMPTIONS (default 3 in the models)
# trades coverage for time; 4 takes about ten times as long.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Sourced, not run, so that the PATH it sets for cargo holds here.
. scripts/setup.sh

export RUSTFLAGS="--cfg loom"
# Optimized, for speed, but without the release profile's LTO and debug
# info, which only slow the build down here.
export CARGO_PROFILE_RELEASE_LTO=false
export CARGO_PROFILE_RELEASE_DEBUG=0
cargo test --release --lib --target-dir "${CARGO_TARGET_DIR:-target}/loom" \
    ring::loom_tests -- --nocapture "$@"
