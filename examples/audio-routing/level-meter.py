#!/usr/bin/python3
"""A reader that meters the writer's audio: peak and RMS level per channel.

    SOCKET=/tmp/audio.sock ./level-meter.py [--interval MS]

It prints one line per interval (default 500 ms of audio), from the
`level` element's messages:

    level-meter:   1.500 s  ch0 peak  -6.0 dB rms  -9.0 dB  ch1 peak  -6.0 dB rms  -9.0 dB

It ends when the writer stops (EOS), or on Ctrl-C, and then prints the
source's counters, `buffers-lost` among them (buffers the writer dropped
for this reader because it fell behind):

    level-meter: finished: 1000 buffers, 0 lost

Needs PyGObject with GStreamer (Debian: python3-gi, gir1.2-gstreamer-1.0)
and the shmring plugin in GST_PLUGIN_PATH.
"""

import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402


def default_socket():
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "/tmp")
    return os.environ.get("SOCKET", os.path.join(runtime_dir, "audio-routing.sock"))


def describe_levels(structure):
    """One line from a `level` message: per channel, peak and RMS in dB."""
    seconds = structure.get_value("stream-time") / Gst.SECOND
    peaks = structure.get_value("peak")
    rms = structure.get_value("rms")
    channels = "  ".join(
        f"ch{index} peak {peak:5.1f} dB rms {mean:5.1f} dB"
        for index, (peak, mean) in enumerate(zip(peaks, rms))
    )
    return f"level-meter: {seconds:7.3f} s  {channels}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=default_socket(), help="the writer's socket path")
    parser.add_argument("--interval", type=int, default=500, help="milliseconds of audio per line")
    args = parser.parse_args()

    Gst.init(None)
    if Gst.ElementFactory.find("shmringsrc") is None:
        print(
            "level-meter: GStreamer cannot find shmringsrc. Build the plugin with "
            "'cargo build --release' and 'export GST_PLUGIN_PATH=$PWD/target/release' "
            "in the gst-shmring checkout.",
            file=sys.stderr,
        )
        return 1

    # sync=false: the buffers carry the writer's running time, not ours, and
    # the live writer paces the stream already.
    pipeline = Gst.parse_launch(
        "shmringsrc name=src ! level name=level post-messages=true "
        "! fakesink sync=false"
    )
    pipeline.get_by_name("src").set_property("socket-path", args.socket)
    pipeline.get_by_name("level").set_property("interval", args.interval * Gst.MSECOND)

    loop = GLib.MainLoop()
    status = 0

    def on_message(_bus, message):
        nonlocal status
        if message.type == Gst.MessageType.ELEMENT:
            structure = message.get_structure()
            if structure is not None and structure.get_name() == "level":
                print(describe_levels(structure), flush=True)
        elif message.type == Gst.MessageType.EOS:
            loop.quit()
        elif message.type == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            print(f"level-meter: error: {error.message} ({debug})", file=sys.stderr, flush=True)
            status = 1
            loop.quit()
        return True

    def on_interrupt():
        loop.quit()
        return GLib.SOURCE_REMOVE

    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, on_interrupt)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, on_interrupt)

    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        print("level-meter: the pipeline would not start", file=sys.stderr)
        return 1
    loop.run()

    stats = pipeline.get_by_name("src").get_property("stats")
    pipeline.set_state(Gst.State.NULL)
    _, buffers = stats.get_uint64("buffers")
    _, lost = stats.get_uint64("buffers-lost")
    print(f"level-meter: finished: {buffers} buffers, {lost} lost", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
