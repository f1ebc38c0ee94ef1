#!/usr/bin/env bash
# Streams 1080p video from one process to another through shmringsink and
# shmringsrc, and reports the rate. Arguments go to the demo, e.g.
# `./scripts/demo.sh --frames 3000 --width 1280 --height 720`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Sourced, not run, so that the PATH it sets for cargo holds here.
. scripts/setup.sh

# --lib puts libgstshmring.so in target/release, where the demo points the
# writer's GST_PLUGIN_PATH; built only as the example's dependency, it would
# stay in target/release/deps.
cargo build --release --lib --example demo
exec "${CARGO_TARGET_DIR:-target}/release/examples/demo" "$@"
