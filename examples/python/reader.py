#!/usr/bin/python3
"""An application that takes a stream out of a shmringsrc.

    GST_PLUGIN_PATH=target/release /usr/bin/python3 examples/python/reader.py /tmp/app.sock 200

Builds ``shmringsrc ! appsink`` with Gst.parse_launch and checks every
sample against what writer.py sent (see pattern.py): caps, timestamps,
sequence and bytes. At EOS it prints a summary and exits 0 if COUNT intact
buffers arrived, 1 otherwise. shmringsrc waits for the writer's socket to
appear, so this may start first.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
from gi.repository import GLib, Gst, GstApp  # noqa: E402,F401 (GstApp: pull_sample)

import pattern  # noqa: E402


def check(sample, seq):
    """What is wrong with sample number ``seq``, or None."""
    caps = sample.get_caps()
    if caps is None or caps.to_string() != pattern.CAPS:
        return f"caps {caps} instead of {pattern.CAPS}"
    buffer = sample.get_buffer()
    if buffer.pts != seq * pattern.DURATION:
        return f"pts {buffer.pts} instead of {seq * pattern.DURATION}"
    data = buffer.extract_dup(0, buffer.get_size())
    if len(data) >= 8 and int.from_bytes(data[:8], "little") != seq:
        return f"sequence number {int.from_bytes(data[:8], 'little')} instead of {seq}"
    if len(data) != pattern.size(seq):
        return f"{len(data)} bytes instead of {pattern.size(seq)}"
    if data != pattern.payload(seq):
        return "bytes that differ from those sent"
    return None


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} SOCKET_PATH COUNT", file=sys.stderr)
        return 2
    socket_path, count = argv[1], int(argv[2])

    Gst.init(None)
    pipeline = Gst.parse_launch("shmringsrc name=src ! appsink name=sink sync=false emit-signals=true")
    pipeline.get_by_name("src").set_property("socket-path", socket_path)
    sink = pipeline.get_by_name("sink")

    received = {"buffers": 0, "intact": 0, "bytes": 0}
    mismatches = []

    # Called from the streaming thread for each buffer.
    def on_new_sample(sink):
        sample = sink.pull_sample()
        seq = received["buffers"]
        problem = check(sample, seq)
        received["buffers"] += 1
        received["bytes"] += sample.get_buffer().get_size()
        if problem is None:
            received["intact"] += 1
        else:
            mismatches.append(f"buffer {seq}: {problem}")
        return Gst.FlowReturn.OK

    sink.connect("new-sample", on_new_sample)

    loop = GLib.MainLoop()
    failure = []

    def on_error(_bus, message):
        error, debug = message.parse_error()
        failure.append(f"{message.src.get_name()}: {error.message} ({debug})")
        loop.quit()

    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message::eos", lambda _bus, _message: loop.quit())
    bus.connect("message::error", on_error)

    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        failure.append("the pipeline did not start; see the error above")
    else:
        loop.run()
    pipeline.set_state(Gst.State.NULL)
    bus.remove_signal_watch()

    for mismatch in mismatches[:10]:
        print(f"reader: {mismatch}", file=sys.stderr)
    if failure:
        print(f"reader: {failure[0]}", file=sys.stderr)
    print(
        f"reader: received {received['buffers']} buffers, {received['intact']} intact, "
        f"{received['bytes']} bytes, expected {count}"
    )
    if failure or mismatches or received["intact"] != count:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
