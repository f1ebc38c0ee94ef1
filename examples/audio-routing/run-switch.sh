#!/usr/bin/env bash
# Two writers and one recorder switched from the first to the second while
# it records: shmringsrc re-pointed in PLAYING, a patch bay across
# processes.
#
#   ./run-switch.sh [SECONDS [OUTPUT_DIR]]
#
# Starts writer A (a 500 Hz tone) and writer B (a 2000 Hz tone), each with
# writer.sh, and switch-recorder.py, which records A and after SECONDS/2
# of its buffers (writer.sh sends 100 a second; by default 10 s in all, so
# 500) sets its socket-path to B's socket. After
# SECONDS it stops the recorder with SIGINT, which finishes the WAV, then
# both writers, and prints a summary: the recording's length and the
# recorder's counts (2 DISCONT: the first buffer, and the switch).
#
# The writers run with WAIT_FOR_CONNECTION=false: each drops its audio
# while the recorder is not linked to it, as a live capture would, and ends
# at once on SIGINT though nobody reads it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
seconds=${1:-10}
if [[ ! $seconds =~ ^[0-9]+$ ]] || ((seconds < 2)); then
    echo "usage: $0 [SECONDS (at least 2) [OUTPUT_DIR]]" >&2
    exit 2
fi
output_dir=${2:-$(mktemp -d -t audio-switch.XXXXXX)}
mkdir -p "$output_dir"

if ! gst-inspect-1.0 shmringsink >/dev/null 2>&1; then
    echo "run-switch: GStreamer cannot find the shmring plugin. Build it with" \
        "'cargo build --release' and 'export GST_PLUGIN_PATH=\$PWD/target/release'" \
        "in the gst-shmring checkout." >&2
    exit 1
fi

socket_dir=$(mktemp -d -t audio-switch-socket.XXXXXX)
declare -A pids=()
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    rm -rf "$socket_dir"
}
trap cleanup EXIT
trap 'exit 143' TERM

# start NAME COMMAND...: as in run-all.sh, in a process group of its own.
start() {
    local name=$1
    shift
    setsid "$@" >"$output_dir/$name.log" 2>&1 &
    pids[$name]=$!
}

# stop NAME: SIGINT, then waits for it (SIGKILL after 30 s); prints and
# returns its status.
stop() {
    local name=$1 pid=${pids[$1]} waited=0 status=0
    kill -INT -- "-$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited == 300)); then
            echo "run-switch: $name still runs after 30 s, killing it"
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    wait "$pid" || status=$?
    unset "pids[$name]"
    echo "run-switch: $name exited with status $status"
    return "$status"
}

export WAIT_FOR_CONNECTION=false
SOCKET=$socket_dir/a.sock FREQ=500 start writer-a "$here/writer.sh"
SOCKET=$socket_dir/b.sock FREQ=2000 start writer-b "$here/writer.sh"
start recorder "$here/switch-recorder.py" "$output_dir/recording.wav" \
    "$socket_dir/a.sock" "$socket_dir/b.sock" --every $((seconds * 50))
echo "run-switch: recording writer A, switching to writer B after $((seconds * 50)) buffers; logs in $output_dir"

interrupted=0
trap 'interrupted=1' INT
for ((tenths = 0; tenths < seconds * 10 && interrupted == 0; tenths++)); do
    sleep 0.1
done

failed=0
stop recorder || failed=1
stop writer-a || failed=1
stop writer-b || failed=1

echo
echo "=== summary ($output_dir) ==="
wav=$output_dir/recording.wav
if [[ -s $wav ]]; then
    python3 - "$wav" <<'PY'
import os, sys, wave
path = sys.argv[1]
with wave.open(path) as recording:
    frames, rate = recording.getnframes(), recording.getframerate()
print(f"recording: {os.path.getsize(path)} bytes, {frames / rate:.2f} s of {rate} Hz")
PY
else
    echo "recording: no WAV written"
    failed=1
fi
grep -E 'switched|finished' "$output_dir/recorder.log" || echo "recorder: no summary"
exit "$failed"
