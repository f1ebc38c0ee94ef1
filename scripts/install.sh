#!/usr/bin/env bash
# Builds the release plugin and installs it where GStreamer finds plugins
# without GST_PLUGIN_PATH, so that `gst-inspect-1.0 shmringsink` works in
# any new shell:
#
#   scripts/install.sh            for this user, into
#                                 ${XDG_DATA_HOME:-~/.local/share}/gstreamer-1.0/plugins
#   scripts/install.sh --system   for every user, into GStreamer's own plugin
#                                 directory, the pluginsdir that pkg-config
#                                 reports for gstreamer-1.0 (needs root, or sudo)
#
# A GStreamer plugin is one shared library and needs nothing else installed:
# no .pc file or headers, which only a C program linking it statically would
# use. So this copies the library rather than bringing in cargo-c.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() {
    echo "usage: $0 [--system]" >&2
    exit 2
}

system=false
case "$#:${1:-}" in
    0:) ;;
    1:--system) system=true ;;
    *) usage ;;
esac

# Sourced, not run, so that the PATH it sets for cargo holds here.
. scripts/setup.sh

if $system; then
    destination="$(pkg-config --variable=pluginsdir gstreamer-1.0)" || {
        echo "install: pkg-config does not know gstreamer-1.0; install libgstreamer1.0-dev" >&2
        exit 1
    }
else
    # GStreamer looks in the user's data directory, as GLib finds it.
    destination="${XDG_DATA_HOME:-$HOME/.local/share}/gstreamer-1.0/plugins"
fi

cargo build --release --lib
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
library="$target_dir/release/libgstshmring.so"

sudo=()
if $system && ((EUID != 0)); then
    sudo=(sudo)
fi
"${sudo[@]}" mkdir -p "$destination"
# Copied under another name and renamed into place: a process that has the
# old plugin loaded keeps its mapping, where copying over the file would
# change the code under it.
"${sudo[@]}" install -m 0644 "$library" "$destination/.libgstshmring.so.new"
"${sudo[@]}" mv -f "$destination/.libgstshmring.so.new" "$destination/libgstshmring.so"
echo "installed $destination/libgstshmring.so; check with: gst-inspect-1.0 shmringsink"
