#!/bin/sh
# Whole-process CPU and wall time of 64-sample audio through shmring,
# against the one-process pipeline, run interleaved:
#   bench/small-buffers.sh ROUNDS PLUGIN_DIR[,READER_PROPERTY=VALUE...] ...
# Each round runs, for each plugin directory, W3 (N buffers as fast as they
# go), the live 48 kHz stream for 10 s, and the writer with no reader
# (wait-for-connection=false); and once the one-process pipelines.
# One line per run: workload, what, wall s, CPU s of every process.
set -eu
rounds=$1
shift
n=${N:-2000000}
live_n=${LIVE_N:-7500}
caps='audio/x-raw,format=S16LE,rate=48000,channels=2,layout=interleaved'
src="audiotestsrc wave=silence samplesperbuffer=64"
sink='fakesink sync=false enable-last-sample=false'
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cpu() { awk '{ print $2 + $3 }' "$1"; }
one() { # label, pipeline...
    label=$1
    shift
    /usr/bin/time -f '%e %U %S' -o "$tmp/one" gst-launch-1.0 -q "$@" > /dev/null
    echo "$label one-process $(cut -d' ' -f1 "$tmp/one") $(cpu "$tmp/one")"
}
two() { # label, plugin[,reader properties], writer pipeline, reader pipeline
    label=$1 plugin=${2%%,*} writer=$3 reader=$4
    props=$(echo "$2" | cut -s -d, -f2- | tr , ' ')
    sock="$tmp/s.sock"
    rm -f "$sock"
    start=$(date +%s.%N)
    GST_PLUGIN_PATH=$plugin /usr/bin/time -f '%e %U %S' -o "$tmp/w" gst-launch-1.0 -q $writer > /dev/null &
    w=$!
    while [ ! -S "$sock" ]; do sleep 0.01; done
    GST_PLUGIN_PATH=$plugin /usr/bin/time -f '%e %U %S' -o "$tmp/r" gst-launch-1.0 -q $reader $props ! $sink > /dev/null
    wait $w
    end=$(date +%s.%N)
    echo "$label $2 $(echo "$end - $start" | bc) $(cpu "$tmp/w") + $(cpu "$tmp/r") = $(echo "$(cpu "$tmp/w") + $(cpu "$tmp/r")" | bc)"
}
alone() { # label, plugin[,reader properties], writer pipeline
    label=$1 plugin=${2%%,*}
    shift 2
    GST_PLUGIN_PATH=$plugin /usr/bin/time -f '%e %U %S' -o "$tmp/w" gst-launch-1.0 -q "$@" > /dev/null
    echo "$label $plugin $(cut -d' ' -f1 "$tmp/w") $(cpu "$tmp/w")"
}
for round in $(seq "$rounds"); do
    echo "# round $round"
    one W3 $src num-buffers=$n ! $caps ! $sink
    for plugin in "$@"; do
        two W3 "$plugin" "$src num-buffers=$n ! $caps ! shmringsink socket-path=$tmp/s.sock" \
            "shmringsrc socket-path=$tmp/s.sock"
    done
    one live $src is-live=true num-buffers=$live_n ! $caps ! $sink
    for plugin in "$@"; do
        two live "$plugin" "$src is-live=true num-buffers=$live_n ! $caps ! shmringsink socket-path=$tmp/s.sock" \
            "shmringsrc socket-path=$tmp/s.sock"
    done
    one no-reader $src num-buffers=$n ! $caps ! $sink
    for plugin in $(printf '%s\n' "$@" | cut -d, -f1 | uniq); do
        alone no-reader "$plugin" $src num-buffers=$n ! $caps ! shmringsink socket-path=$tmp/s.sock wait-for-connection=false
    done
done
