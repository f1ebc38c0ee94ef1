//! The embedding examples, run as real processes against real pipelines:
//! `examples/ring_reader.rs` (the ring read from an application's own mio
//! loop, no GStreamer API) against a gst-launch writer, and the PyGObject
//! apps `examples/python/{writer,reader}.py` against each other.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::*;

const FRAMES: usize = 30;
/// One 320x240 I420 frame.
const FRAME_BYTES: u64 = 320 * 240 * 3 / 2;
/// A heap of 4 such frames, so that the 30 frames can travel in heap blocks
/// only if the reader gives the blocks back.
const HEAP_BYTES: u64 = 524_288;
/// Buffers the Python writer sends; pattern.py makes every fourth one small
/// enough to travel inline.
const PYTHON_BUFFERS: usize = 200;
/// Debian's interpreter, which has PyGObject (python3-gi); a python3 earlier
/// on PATH, such as pyenv's, may not.
const PYTHON: &str = "/usr/bin/python3";

/// `target/<profile>/examples/<name>`, which `cargo test` and `cargo test
/// --all-targets` build along with the tests; `cargo test --test embedding`
/// alone does not.
fn example_binary(name: &str) -> PathBuf {
    let deps = plugin_dir();
    let path = deps
        .parent()
        .expect("the test binary lives in target/<profile>/deps")
        .join("examples")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --example {name}` (plain `cargo test` builds it too)",
        path.display()
    );
    path
}

fn python_example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python").join(name)
}

/// The value of `key=` in a `ring_reader` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn ring_reader_example_prints_every_record() {
    let scratch = Scratch::new("ring_reader");
    let socket = scratch.socket();
    let writer = start_writer(
        &scratch,
        &format!(
            "videotestsrc num-buffers={FRAMES} ! video/x-raw,format=I420,width=320,height=240 ! shmringsink ring-size={HEAP_BYTES} socket-path={}",
            socket.display()
        ),
    );
    let reader = Launch::spawn_program(&scratch, "ring_reader", &example_binary("ring_reader"), [&socket]);
    let reader = reader.finish();
    writer.finish().assert_success();
    reader.assert_success();

    let lines: Vec<&str> = reader.stdout.lines().collect();
    let caps: Vec<&str> = lines.iter().copied().filter(|line| line.starts_with("Caps ")).collect();
    assert_eq!(caps.len(), 1, "one Caps record\n{}", reader.describe());
    assert!(
        caps[0].contains("video/x-raw") && caps[0].contains("width=(int)320") && caps[0].contains("height=(int)240"),
        "the Caps line carries the writer's caps: {}",
        caps[0]
    );

    let buffers: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|line| line.starts_with("Buffer "))
        .collect();
    assert_eq!(
        buffers.len(),
        FRAMES,
        "one Buffer line per frame\n{}",
        reader.describe()
    );
    // A writer whose blocks are all held copies frames into the record
    // queue instead: more frames in blocks than the heap holds at once
    // means the reader gave blocks back.
    let in_blocks = buffers.iter().filter(|line| field(line, "block").is_some()).count();
    assert!(
        in_blocks as u64 > HEAP_BYTES / FRAME_BYTES,
        "only {in_blocks} frames came in heap blocks, which the heap holds at once: were blocks given back?\n{}",
        reader.describe()
    );
    let mut previous_pts = None;
    for line in &buffers {
        assert_eq!(field(line, "size"), Some(FRAME_BYTES.to_string().as_str()), "{line}");
        let pts: u64 = field(line, "pts")
            .and_then(|pts| pts.parse().ok())
            .unwrap_or_else(|| panic!("a frame without a pts: {line}"));
        assert!(
            previous_pts.is_none_or(|previous| pts > previous),
            "pts goes backwards at {line}"
        );
        previous_pts = Some(pts);
    }

    let summary = lines.last().copied().unwrap_or_default();
    assert_eq!(
        summary,
        format!(
            "summary: records={} buffers={FRAMES} bytes={}",
            lines.len() - 1,
            FRAMES as u64 * FRAME_BYTES
        ),
        "{}",
        reader.describe()
    );
}

#[test]
fn python_apps_stream_through_the_ring() {
    let gi = Command::new(PYTHON)
        .args(["-c", "import gi; gi.require_version('GstApp', '1.0')"])
        .output()
        .unwrap_or_else(|err| panic!("running {PYTHON}: {err}"));
    assert!(
        gi.status.success(),
        "{PYTHON} cannot load PyGObject and GstApp; install python3-gi and gir1.2-gst-plugins-base-1.0 (scripts/setup.sh does)\n{}",
        String::from_utf8_lossy(&gi.stderr)
    );

    let scratch = Scratch::new("python");
    let socket = scratch.socket();
    let count = PYTHON_BUFFERS.to_string();
    let arguments = |script: &str| {
        [
            python_example(script).into_os_string(),
            socket.clone().into(),
            (&count).into(),
        ]
    };

    // The reader first: its shmringsrc waits for the writer's socket.
    let reader = Launch::spawn_program(&scratch, "reader.py", Path::new(PYTHON), arguments("reader.py"));
    let writer = Launch::spawn_program(&scratch, "writer.py", Path::new(PYTHON), arguments("writer.py"));
    let writer = writer.finish();
    let reader = reader.finish();
    writer.assert_success();
    reader.assert_success();

    assert!(
        writer
            .stdout
            .contains(&format!("writer: pushed {PYTHON_BUFFERS} buffers")),
        "{}",
        writer.describe()
    );
    assert!(
        reader.stdout.contains(&format!(
            "reader: received {PYTHON_BUFFERS} buffers, {PYTHON_BUFFERS} intact"
        )),
        "{}",
        reader.describe()
    );
}
