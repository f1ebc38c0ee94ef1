#!/usr/bin/env bash
# A reader that never keeps up: it sleeps SLEEP_MS (default 100) on every
# buffer, while the writer sends one every 10 ms. With when-full=drop the
# writer does not wait for it: it loses buffers, and the other readers do
# not notice. Each loss reaches this reader as a QoS message with the
# totals so far, which this script prints as
#
#   slow-consumer: lost 120 buffers so far (31 delivered)
#
#   SOCKET=/tmp/audio.sock ./slow-consumer.sh
#
# It ends when the writer stops (EOS), after the few buffers it still has
# queued, or on Ctrl-C.
set -euo pipefail

socket=${SOCKET:-${XDG_RUNTIME_DIR:-/tmp}/audio-routing.sock}
sleep_us=$((${SLEEP_MS:-100} * 1000))

# -m prints every bus message; stdbuf -oL makes it print them as they come
# rather than in 4 KiB batches. A process substitution, rather than a pipe,
# keeps gst-launch's pid ($!) so that its exit status is this script's.
exec {messages}< <(exec stdbuf -oL gst-launch-1.0 -m shmringsrc name=src "socket-path=$socket" \
    ! identity "sleep-time=$sleep_us" ! fakesink sync=false 2>&1)
launch=$!

# Ctrl-C reaches gst-launch too, which stops; this script goes on until
# gst-launch's output ends, to print the total.
trap : INT

lost=0
printed_at=-1
while true; do
    status=0
    IFS= read -r line <&"$messages" || status=$?
    if ((status > 128)); then
        continue # interrupted by a signal
    elif ((status != 0)); then
        break # gst-launch exited
    fi
    if [[ $line == *'from element "src" (qos)'* ]]; then
        [[ $line =~ processed=\(guint64\)([0-9]+) ]] && delivered=${BASH_REMATCH[1]}
        [[ $line =~ dropped=\(guint64\)([0-9]+) ]] && lost=${BASH_REMATCH[1]}
        # A loss can come every few buffers: one line a second at most.
        if ((SECONDS != printed_at)); then
            printed_at=$SECONDS
            echo "slow-consumer: lost $lost buffers so far (${delivered:-?} delivered)"
        fi
    elif [[ $line == 'Pipeline is PREROLLED'* ]]; then
        echo "slow-consumer: reading the stream" # its first buffer is in
    elif [[ $line == *ERROR* || $line == *WARNING* || $line == *EOS* ]]; then
        echo "slow-consumer: $line"
    fi
done

status=0
wait "$launch" || status=$?
echo "slow-consumer: finished (status $status), lost $lost buffers in all"
exit "$status"
