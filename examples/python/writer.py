#!/usr/bin/python3
"""An application that streams its own data into a shmringsink.

    GST_PLUGIN_PATH=target/release /usr/bin/python3 examples/python/writer.py /tmp/app.sock 200

Builds ``appsrc ! shmringsink`` with Gst.parse_launch, pushes COUNT numbered
buffers (see pattern.py) when appsrc asks for data, then EOS, and exits 0
once the sink has taken the EOS. shmringsink waits for its reader before it
takes the first buffer, so reader.py may start before or after this.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
from gi.repository import GLib, Gst, GstApp  # noqa: E402,F401 (GstApp: push_buffer)

import pattern  # noqa: E402


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} SOCKET_PATH COUNT", file=sys.stderr)
        return 2
    socket_path, count = argv[1], int(argv[2])

    Gst.init(None)
    pipeline = Gst.parse_launch("appsrc name=src format=time ! shmringsink name=sink")
    src = pipeline.get_by_name("src")
    src.set_property("caps", Gst.Caps.from_string(pattern.CAPS))
    pipeline.get_by_name("sink").set_property("socket-path", socket_path)

    pushed = {"buffers": 0, "bytes": 0}

    # Called from the streaming thread whenever appsrc's queue runs low.
    def on_need_data(src, _hint):
        seq = pushed["buffers"]
        if seq == count:
            src.end_of_stream()
            return
        data = pattern.payload(seq)
        buffer = Gst.Buffer.new_wrapped(data)
        buffer.pts = seq * pattern.DURATION
        buffer.duration = pattern.DURATION
        pushed["buffers"] += 1
        pushed["bytes"] += len(data)
        src.push_buffer(buffer)

    src.connect("need-data", on_need_data)

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

    if failure:
        print(f"writer: {failure[0]}", file=sys.stderr)
        return 1
    print(f"writer: pushed {pushed['buffers']} buffers, {pushed['bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
