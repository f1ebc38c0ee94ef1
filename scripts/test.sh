#!/usr/bin/env bash
# The test command: builds every target and runs the unit, integration,
# benchmark (in test mode) and documentation tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Sourced, not run, so that the PATH it sets for cargo holds here.
. scripts/setup.sh

# A GStreamer-CRITICAL anywhere, in a test or in a gst-launch-1.0 it starts,
# aborts that process, so it fails the test instead of scrolling past.
export G_DEBUG=fatal-criticals

cargo build --all-targets
cargo test --all-targets
cargo test --doc
