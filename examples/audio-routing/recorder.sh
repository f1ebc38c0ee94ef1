#!/usr/bin/env bash
# A reader that records the writer's audio into a WAV file.
#
#   SOCKET=/tmp/audio.sock ./recorder.sh recording.wav
#
# It ends cleanly either way: when the writer stops (its EOS arrives through
# the ring), or on Ctrl-C (`-e` sends EOS down this pipeline). Either way
# wavenc writes the final sizes into the header before the file is closed.
set -euo pipefail

socket=${SOCKET:-${XDG_RUNTIME_DIR:-/tmp}/audio-routing.sock}
output=${1:-recording.wav}

# The caps come through the ring: no capsfilter is needed before wavenc.
exec gst-launch-1.0 -e shmringsrc "socket-path=$socket" \
    ! wavenc ! filesink "location=$output"
