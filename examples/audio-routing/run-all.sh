#!/usr/bin/env bash
# Starts the writer and its three readers, lets them run, stops them, and
# prints what each did.
#
#   ./run-all.sh [SECONDS [OUTPUT_DIR]]
#
# SECONDS defaults to 10. The recording and each process's log go to
# OUTPUT_DIR (default: a new temporary directory, kept and printed); the
# socket lives in a temporary directory of its own, removed at the end.
# Ctrl-C stops the run early, the same clean way.
#
# Stopping: the writer gets SIGINT, which its `gst-launch-1.0 -e` turns
# into EOS. The EOS crosses the ring to every reader, so the recorder
# finishes its WAV header and each reader exits by itself with status 0.
# A process still running after GRACE seconds (default 30) gets SIGINT
# itself (the recorder's `-e` still finishes the file), and SIGKILL 10 s
# later. If the writer fails, the readers get SIGINT at once.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
seconds=${1:-10}
if [[ ! $seconds =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS [OUTPUT_DIR]]" >&2
    exit 2
fi
output_dir=${2:-$(mktemp -d -t audio-routing.XXXXXX)}
mkdir -p "$output_dir"
grace=${GRACE:-30}

if ! gst-inspect-1.0 shmringsink >/dev/null 2>&1; then
    echo "run-all: GStreamer cannot find the shmring plugin. Build it with" \
        "'cargo build --release' and 'export GST_PLUGIN_PATH=\$PWD/target/release'" \
        "in the gst-shmring checkout." >&2
    exit 1
fi

socket_dir=$(mktemp -d -t audio-routing-socket.XXXXXX)
export SOCKET=$socket_dir/audio.sock

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

# start NAME COMMAND...: runs COMMAND in the background, its output in
# NAME.log, in a session and process group of its own: a signal for it
# reaches its children too (slow-consumer.sh's gst-launch), and a Ctrl-C
# in the terminal reaches only this script, which then stops them in order.
start() {
    local name=$1
    shift
    setsid "$@" >"$output_dir/$name.log" 2>&1 &
    pids[$name]=$!
}

# Readers first: they wait for the socket, and the writer holds the stream
# until the first of them connects.
start recorder "$here/recorder.sh" "$output_dir/recording.wav"
start level-meter "$here/level-meter.py" --interval 500
start slow-consumer "$here/slow-consumer.sh"
start writer "$here/writer.sh"
echo "run-all: writer and three readers running for $seconds s; logs in $output_dir"

interrupted=0
trap 'interrupted=1' INT
for ((tenths = 0; tenths < seconds * 10 && interrupted == 0; tenths++)); do
    if ! kill -0 "${pids[writer]}" 2>/dev/null; then
        echo "run-all: the writer stopped early; see $output_dir/writer.log"
        break
    fi
    sleep 0.1
done
if ((interrupted)); then
    echo "run-all: interrupted, stopping early"
fi

# stop NAME GRACE: waits for NAME to exit (SIGINT after GRACE seconds,
# SIGKILL 10 s later), prints its status and returns it.
stop() {
    local name=$1 grace=$2 pid=${pids[$1]} waited=0 status=0
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited == grace * 10)); then
            echo "run-all: $name still runs after $grace s, sending SIGINT"
            kill -INT -- "-$pid" 2>/dev/null || true
        elif ((waited == grace * 10 + 100)); then
            echo "run-all: $name still runs, killing it"
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    wait "$pid" || status=$?
    unset "pids[$name]"
    echo "run-all: $name exited with status $status"
    return "$status"
}

failed=0
kill -INT -- "-${pids[writer]}" 2>/dev/null || true
# The writer's EOS ends the readers; without a writer nothing will.
stop writer "$grace" || failed=1
reader_grace=$grace
((failed == 0)) || reader_grace=0
for name in recorder level-meter slow-consumer; do
    stop "$name" "$reader_grace" || failed=1
done

echo
echo "=== summary ($output_dir) ==="
wav=$output_dir/recording.wav
if [[ -s $wav ]]; then
    python3 - "$wav" <<'EOF'
import os, sys, wave
path = sys.argv[1]
with wave.open(path) as recording:
    frames, rate, channels = recording.getnframes(), recording.getframerate(), recording.getnchannels()
print(f"recording: {os.path.getsize(path)} bytes, {frames / rate:.2f} s of {rate} Hz, {channels} channels")
EOF
else
    echo "recording: no WAV written"
    failed=1
fi
grep -E 'dB' "$output_dir/level-meter.log" | tail -n 1 || echo "level-meter: no level line"
grep -E 'finished' "$output_dir/level-meter.log" || true
grep -E 'so far' "$output_dir/slow-consumer.log" | tail -n 1 || echo "slow-consumer: lost nothing"
grep -E 'finished' "$output_dir/slow-consumer.log" || true
exit "$failed"
