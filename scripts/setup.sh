#!/usr/bin/env bash
# Prepares a Debian 12 machine to build, test and run gst-plugin-shmring:
# installs the system packages that are missing and puts cargo on PATH.
#
# Safe to run again: apt-get runs only when a package is missing, so on a
# prepared machine this is a quick no-op. The other scripts source it
# (`. scripts/setup.sh`) so that the PATH it sets holds for them too.
set -euo pipefail

shmring_setup() {
    local packages=(
        build-essential
        pkg-config
        libgstreamer1.0-dev
        libgstreamer-plugins-base1.0-dev
        gstreamer1.0-tools
        gstreamer1.0-plugins-base
        gstreamer1.0-plugins-good
        gstreamer1.0-plugins-bad
        # gst-play-1.0, which the shmring:// URI tests run.
        gstreamer1.0-plugins-base-apps
        # The PyGObject examples (examples/python, and the level meter of
        # examples/audio-routing) and their tests.
        python3-gi
        gir1.2-gstreamer-1.0
        gir1.2-gst-plugins-base-1.0
        # The benchmark: syscall counts (perf, or strace where perf cannot
        # run) and the font its charts are drawn with.
        linux-perf
        strace
        fonts-dejavu-core
    )
    local missing=() package
    for package in "${packages[@]}"; do
        if [[ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" != "install ok installed" ]]; then
            missing+=("$package")
        fi
    done
    if ((${#missing[@]})); then
        echo "setup: installing ${missing[*]}" >&2
        local sudo=()
        ((EUID == 0)) || sudo=(sudo)
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi

    # rustup puts cargo in ~/.cargo/bin, which only login shells have on PATH.
    if ! command -v cargo >/dev/null && [[ -f "${HOME:-}/.cargo/env" ]]; then
        . "$HOME/.cargo/env"
    fi
    if ! command -v cargo >/dev/null; then
        echo "setup: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
        return 1
    fi
}

shmring_setup
unset -f shmring_setup
