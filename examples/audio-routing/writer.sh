#!/usr/bin/env bash
# The writer: one live audio source, 48 kHz S16LE stereo in 10 ms buffers,
# into a shmringsink that up to MAX_READERS reader processes read at once.
#
#   SOCKET=/tmp/audio.sock ./writer.sh          # a live test tone
#   PULSE=1 SOCKET=/tmp/audio.sock ./writer.sh  # the default PulseAudio/PipeWire input
#
# Stop it with Ctrl-C: `-e` turns that into EOS, which reaches every reader,
# so a recorder finishes its file and each reader exits with status 0.
# With no reader connected, that EOS waits for one (wait-for-connection):
# a second Ctrl-C stops the writer at once.
#
# when-full=drop: a live capture cannot wait. If the writer waited for a
# reader that falls behind (when-full=block), the capture would stall, the
# microphone's own buffer would overrun, and every reader, the recorder
# too, would lose audio for that one slow reader. With drop the writer
# never waits for a reader: a reader that falls behind loses buffers (it
# gets a DISCONT, a QoS message and `buffers-lost` in its stats), and the
# others lose nothing. The sink still holds the stream until the first
# reader connects (wait-for-connection=true), so a recorder started first
# gets the stream from its first sample.
#
# Environment (all optional):
#   SOCKET              socket path (default $XDG_RUNTIME_DIR or /tmp, audio-routing.sock)
#   PULSE=1             capture from pulsesrc instead of audiotestsrc, if it is installed
#   MAX_READERS         readers served at once (default 4: the three examples and one more)
#   WHEN_FULL           drop (default), block (lossless, the slowest reader paces all) or auto
#   SAMPLES_PER_BUFFER  audio frames per buffer (default 480, 10 ms at 48 kHz)
#   FREQ                the test tone's frequency in Hz (default 440)
#   NUM_BUFFERS         stop after this many buffers (default -1: run until Ctrl-C)
#   LIVE                1 (default): produce the tone in real time; 0: as fast as readers take it
#   WAIT_FOR_CONNECTION true (default): hold the stream, and the EOS, until a reader connects;
#                       false: drop the audio while no reader is connected, and end at once
#                       (the writers of run-switch.sh, which a recorder leaves and comes back to)
set -euo pipefail

socket=${SOCKET:-${XDG_RUNTIME_DIR:-/tmp}/audio-routing.sock}
max_readers=${MAX_READERS:-4}
when_full=${WHEN_FULL:-drop}
samples_per_buffer=${SAMPLES_PER_BUFFER:-480}
freq=${FREQ:-440}
num_buffers=${NUM_BUFFERS:--1}
live=${LIVE:-1}
wait_for_connection=${WAIT_FOR_CONNECTION:-true}

if ! gst-inspect-1.0 shmringsink >/dev/null 2>&1; then
    echo "writer: GStreamer cannot find shmringsink. Build the plugin with" \
        "'cargo build --release' and 'export GST_PLUGIN_PATH=\$PWD/target/release'" \
        "in the gst-shmring checkout." >&2
    exit 1
fi

caps=audio/x-raw,format=S16LE,layout=interleaved,rate=48000,channels=2
if [[ ${PULSE:-0} == 1 ]] && gst-inspect-1.0 pulsesrc >/dev/null 2>&1; then
    # latency-time is in microseconds: 10 ms buffers, as for the tone.
    buffer_us=$((samples_per_buffer * 1000000 / 48000))
    source=(pulsesrc "num-buffers=$num_buffers" "latency-time=$buffer_us"
        ! audioconvert ! audioresample ! "$caps")
    echo "writer: capturing from pulsesrc into $socket" >&2
else
    if [[ ${PULSE:-0} == 1 ]]; then
        echo "writer: PULSE=1 but there is no pulsesrc (Debian package" \
            "gstreamer1.0-pulseaudio); sending a test tone instead" >&2
    fi
    if [[ $live == 1 ]]; then is_live=true; else is_live=false; fi
    source=(audiotestsrc "is-live=$is_live" "num-buffers=$num_buffers"
        "samplesperbuffer=$samples_per_buffer" wave=sine "freq=$freq" volume=0.5
        ! "$caps")
    echo "writer: sending a $freq Hz tone into $socket" >&2
fi

exec gst-launch-1.0 -e "${source[@]}" \
    ! shmringsink "socket-path=$socket" "max-readers=$max_readers" "when-full=$when_full" \
    "wait-for-connection=$wait_for_connection"
