#!/usr/bin/python3
"""A recorder switched between writers while it records: a patch bay.

    ./switch-recorder.py recording.wav SOCKET_A SOCKET_B [...] [--every BUFFERS]

It records `shmringsrc ! wavenc ! filesink` from SOCKET_A, and after every
BUFFERS buffers it recorded (default 500: 5 s of writer.sh's 10 ms buffers)
sets the source's `socket-path` to the next socket in the list, without
stopping its pipeline: the recording goes on
from that writer, with a DISCONT on its first buffer, and a new segment or
caps only where they differ. After the last socket it stays there. This is
what `shmringsrc` offers for routing audio between processes: any reader
can be re-pointed at any writer while it plays.

It prints each switch:

    switch-recorder: recording /run/user/1000/a.sock
    switch-recorder: switched to /run/user/1000/b.sock

and at the end (the current writer's EOS, or Ctrl-C, which finishes the
WAV header):

    switch-recorder: finished: 812 buffers, 2 DISCONT, 1 switches

(the first buffer of any source is a DISCONT, then one per switch).

Needs PyGObject with GStreamer (Debian: python3-gi, gir1.2-gstreamer-1.0)
and the shmring plugin in GST_PLUGIN_PATH.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="the WAV file to write")
    parser.add_argument("sockets", nargs="+", help="the writers' socket paths, in the order to record them")
    parser.add_argument("--every", type=int, default=500, help="buffers recorded between two switches")
    args = parser.parse_args()

    Gst.init(None)
    if Gst.ElementFactory.find("shmringsrc") is None:
        print(
            "switch-recorder: GStreamer cannot find shmringsrc. Build the plugin with "
            "'cargo build --release' and 'export GST_PLUGIN_PATH=$PWD/target/release' "
            "in the gst-shmring checkout.",
            file=sys.stderr,
        )
        return 1

    pipeline = Gst.parse_launch("shmringsrc name=src ! wavenc ! filesink name=file")
    source = pipeline.get_by_name("src")
    source.set_property("socket-path", args.sockets[0])
    pipeline.get_by_name("file").set_property("location", args.output)
    print(f"switch-recorder: recording {args.sockets[0]}", flush=True)

    counts = {"buffers": 0, "discont": 0, "switches": 0}
    remaining = list(args.sockets[1:])

    def switch():
        socket = remaining.pop(0)
        # The source is PLAYING: it leaves the writer it reads and links to
        # this one, and the pipeline runs on.
        source.set_property("socket-path", socket)
        counts["switches"] += 1
        print(f"switch-recorder: switched to {socket}", flush=True)
        return GLib.SOURCE_REMOVE

    # Counted on the streaming thread; the switch is made on the main loop.
    def count_buffer(_pad, info):
        counts["buffers"] += 1
        if info.get_buffer().has_flags(Gst.BufferFlags.DISCONT):
            counts["discont"] += 1
        due = len(args.sockets) - len(remaining)
        if remaining and counts["buffers"] == due * args.every:
            GLib.idle_add(switch)
        return Gst.PadProbeReturn.OK

    source.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, count_buffer)

    loop = GLib.MainLoop()
    status = 0

    def on_message(_bus, message):
        nonlocal status
        if message.type == Gst.MessageType.EOS:
            loop.quit()
        elif message.type == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            print(f"switch-recorder: error: {error.message} ({debug})", file=sys.stderr, flush=True)
            status = 1
            loop.quit()
        return True

    def on_interrupt():
        # EOS down the pipeline, so that wavenc writes the final sizes into
        # the header before the file is closed; the EOS message ends the loop.
        pipeline.send_event(Gst.Event.new_eos())
        return GLib.SOURCE_REMOVE

    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, on_interrupt)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, on_interrupt)

    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        print("switch-recorder: the pipeline would not start", file=sys.stderr)
        return 1
    loop.run()
    pipeline.set_state(Gst.State.NULL)
    print(
        f"switch-recorder: finished: {counts['buffers']} buffers, {counts['discont']} DISCONT, "
        f"{counts['switches']} switches",
        flush=True,
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
