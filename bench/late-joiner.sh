#!/bin/sh
# Time to first decoded picture for a viewer that joins live VP8 with a
# 20 s GOP (keyframe-max-dist=600 at 30 frames/s) 3 s or more after the
# writer started, so that without a keyframe on request it would wait up to
# 17 s for the encoder's next one. Each viewer is a whole gst-launch-1.0
# process, timed from its start to its exit after the first decoded frame
# (identity eos-after=1): process start-up and teardown are included, so
# the time to the picture itself is lower.
#
#   cargo build --release && bench/late-joiner.sh [runs]
#
# GST_PLUGIN_PATH defaults to target/release.
set -eu
runs=${1:-5}
cd "$(dirname "$0")/.."
export GST_PLUGIN_PATH="${GST_PLUGIN_PATH:-$PWD/target/release}"
dir=$(mktemp -d)
socket="$dir/vp8.sock"
gst-launch-1.0 -q videotestsrc is-live=true pattern=ball \
    ! video/x-raw,width=320,height=240,framerate=30/1 \
    ! vp8enc keyframe-max-dist=600 deadline=1 \
    ! shmringsink socket-path="$socket" wait-for-connection=false >"$dir/writer.log" 2>&1 &
writer=$!
trap 'kill $writer 2>/dev/null; rm -rf "$dir"' EXIT
sleep 3
times=""
i=0
while [ "$i" -lt "$runs" ]; do
    start=$(date +%s%N)
    gst-launch-1.0 -q shmringsrc socket-path="$socket" ! vp8dec ! identity eos-after=1 ! fakesink >/dev/null
    end=$(date +%s%N)
    ms=$(( (end - start) / 1000000 ))
    echo "viewer $((i + 1)): first picture, and exit, after $ms ms"
    times="$times $ms"
    i=$((i + 1))
    sleep 1
done
median=$(printf '%s\n' $times | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
echo "median of $runs: $median ms"
