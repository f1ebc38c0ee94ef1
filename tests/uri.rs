//! `shmring://` URIs and named streams: playbin, uridecodebin and
//! gst-play-1.0 read a writer in another process through its URI, a sink
//! made from a URI writes where it names, and `stream=NAME` finds the socket
//! in the stream directory. Every test compares the bytes read with the
//! bytes the same source makes in this process.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{Launch, Scratch, init_gst, parse_pipeline, play_to_eos};
use gst::prelude::*;

const VIDEO: &str =
    "videotestsrc num-buffers=20 pattern=smpte ! video/x-raw,format=I420,width=160,height=120,framerate=30/1";
const AUDIO: &str =
    "audiotestsrc num-buffers=20 samplesperbuffer=480 wave=ticks ! audio/x-raw,format=S16LE,rate=48000,channels=2";

/// Every byte the appsink named `out` in `pipeline` receives, in order, up
/// to EOS.
fn bytes_received(pipeline: &gst::Pipeline, what: &str) -> Vec<u8> {
    let sink = pipeline
        .by_name("out")
        .and_then(|sink| sink.downcast::<gst_app::AppSink>().ok())
        .expect("the pipeline has an appsink named out");
    bytes_from(&sink, || play_to_eos(pipeline, what))
}

/// Every byte `sink` receives while `run` runs.
fn bytes_from(sink: &gst_app::AppSink, run: impl FnOnce()) -> Vec<u8> {
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let collected = bytes.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                collected.lock().unwrap().extend_from_slice(&map);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    run();
    std::mem::take(&mut bytes.lock().unwrap())
}

/// The bytes `source` makes when run in this process.
fn reference(source: &str) -> Vec<u8> {
    let bytes = bytes_received(
        &parse_pipeline(&format!("{source} ! appsink name=out sync=false")),
        "reference pipeline",
    );
    assert!(!bytes.is_empty(), "the reference {source} made no bytes");
    bytes
}

fn assert_same(expected: &[u8], actual: &[u8], what: &str) {
    assert!(
        expected == actual,
        "{what}: {} bytes read, {} written; first difference at byte {:?}",
        actual.len(),
        expected.len(),
        expected.iter().zip(actual).position(|(a, b)| a != b)
    );
}

/// A gst-launch-1.0 child whose stream directory is under `runtime`
/// (`XDG_RUNTIME_DIR`), so that tests running at once never share a name.
fn launch_in(scratch: &Scratch, name: &str, runtime: &Path, description: &str) -> Launch {
    let mut command = Command::new("gst-launch-1.0");
    command
        .env("XDG_RUNTIME_DIR", runtime)
        .args(description.split_whitespace());
    Launch::spawn_command(scratch, name, command)
}

/// A private XDG_RUNTIME_DIR for one test, as a login session would have.
fn runtime_dir(scratch: &Scratch) -> std::path::PathBuf {
    let runtime = scratch.path("run");
    fs::create_dir(&runtime).unwrap();
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
    runtime
}

/// playbin with a source element made from the URI, and `out` as its
/// `kind` ("video" or "audio") sink.
fn playbin(uri: &str, kind: &str) -> (gst::Pipeline, gst_app::AppSink) {
    init_gst();
    let out = gst_app::AppSink::builder().sync(false).build();
    let other = gst::ElementFactory::make("fakesink").build().unwrap();
    let (video, audio) = match kind {
        "video" => (out.upcast_ref::<gst::Element>(), &other),
        _ => (&other, out.upcast_ref::<gst::Element>()),
    };
    let playbin = gst::ElementFactory::make("playbin")
        .property("uri", uri)
        .property("video-sink", video)
        .property("audio-sink", audio)
        .build()
        .expect("playbin exists")
        .downcast::<gst::Pipeline>()
        .expect("playbin is a pipeline");
    (playbin, out)
}

#[test]
fn playbin_plays_a_writers_video_to_eos() {
    let scratch = Scratch::new("playbin_video");
    let socket = scratch.socket();
    let writer = common::start_writer(
        &scratch,
        &format!("{VIDEO} ! shmringsink socket-path={}", socket.display()),
    );
    let (playbin, out) = playbin(&format!("shmring://{}", socket.display()), "video");
    let read = bytes_from(&out, || play_to_eos(&playbin, "playbin"));
    writer.finish().assert_success();
    assert_same(&reference(VIDEO), &read, "playbin's video");
}

#[test]
fn playbin_plays_a_writers_audio_to_eos() {
    let scratch = Scratch::new("playbin_audio");
    let socket = scratch.socket();
    let writer = common::start_writer(
        &scratch,
        &format!("{AUDIO} ! shmringsink socket-path={}", socket.display()),
    );
    let (playbin, out) = playbin(&format!("shmring://{}", socket.display()), "audio");
    let read = bytes_from(&out, || play_to_eos(&playbin, "playbin"));
    writer.finish().assert_success();
    assert_same(&reference(AUDIO), &read, "playbin's audio");
}

/// uridecodebin and the named stream, both in child processes: the writer
/// names the stream, the reader's URI names it too.
#[test]
fn uridecodebin_reads_a_named_stream() {
    let scratch = Scratch::new("uridecodebin");
    let runtime = runtime_dir(&scratch);
    let output = scratch.path("audio.raw");
    let mut writer = launch_in(
        &scratch,
        "writer",
        &runtime,
        &format!("{AUDIO} ! shmringsink stream=tone"),
    );
    writer.wait_until_started();
    launch_in(
        &scratch,
        "reader",
        &runtime,
        &format!(
            "uridecodebin uri=shmring://tone ! filesink location={}",
            output.display()
        ),
    )
    .finish()
    .assert_success();
    writer.finish().assert_success();
    assert_same(&reference(AUDIO), &fs::read(&output).unwrap(), "uridecodebin's audio");
}

#[test]
fn gst_play_plays_a_named_stream() {
    let scratch = Scratch::new("gst_play");
    let runtime = runtime_dir(&scratch);
    let output = scratch.path("video.raw");
    let mut writer = launch_in(
        &scratch,
        "writer",
        &runtime,
        &format!("{VIDEO} ! shmringsink stream=clip"),
    );
    writer.wait_until_started();
    let mut player = Command::new("gst-play-1.0");
    player
        .env("XDG_RUNTIME_DIR", &runtime)
        .arg("--no-interactive")
        .arg(format!("--videosink=filesink location={}", output.display()))
        .arg("--audiosink=fakesink")
        .arg("shmring://clip");
    let player = Launch::spawn_command(&scratch, "gst-play", player).finish();
    player.assert_success();
    assert!(
        !player.stderr.contains("ERROR") && !player.stdout.contains("ERROR"),
        "gst-play reported an error\n{}",
        player.describe()
    );
    writer.finish().assert_success();
    assert_same(&reference(VIDEO), &fs::read(&output).unwrap(), "gst-play's video");
}

#[test]
fn make_from_uri_gives_a_sink_at_the_path() {
    init_gst();
    let scratch = Scratch::new("make_from_uri");
    let socket = scratch.socket();
    let uri = format!("shmring://{}", socket.display());
    let sink = gst::Element::make_from_uri(gst::URIType::Sink, &uri, None).expect("a sink handles shmring://");
    assert_eq!(sink.factory().expect("made by a factory").name(), "shmringsink");
    assert_eq!(
        sink.property::<Option<String>>("socket-path").as_deref(),
        socket.to_str()
    );
    assert_eq!(
        sink.dynamic_cast_ref::<gst::URIHandler>().unwrap().uri().as_deref(),
        Some(uri.as_str())
    );

    let writer = parse_pipeline(&format!("{VIDEO} ! identity name=last"));
    writer.add(&sink).unwrap();
    writer.by_name("last").unwrap().link(&sink).unwrap();
    writer.set_state(gst::State::Playing).unwrap();
    let output = scratch.path("video.raw");
    let reader = Launch::spawn(
        &scratch,
        "reader",
        &format!(
            "shmringsrc socket-path={} ! filesink location={}",
            socket.display(),
            output.display()
        ),
    );
    reader.finish().assert_success();
    common::wait_for_eos(&writer, "writer");
    assert_same(
        &reference(VIDEO),
        &fs::read(&output).unwrap(),
        "the reader of the URI's sink",
    );
}

#[test]
fn stream_names_a_socket_in_the_runtime_directory() {
    let scratch = Scratch::new("stream_runtime");
    let runtime = runtime_dir(&scratch);
    let output = scratch.path("video.raw");
    let mut writer = launch_in(
        &scratch,
        "writer",
        &runtime,
        &format!("{VIDEO} ! shmringsink stream=cam"),
    );
    writer.wait_until_started();
    let directory = runtime.join("shmring");
    assert!(
        common::is_socket(&directory.join("cam")),
        "no socket at {}/cam",
        directory.display()
    );
    assert_eq!(fs::metadata(&directory).unwrap().permissions().mode() & 0o777, 0o700);
    launch_in(
        &scratch,
        "reader",
        &runtime,
        &format!("shmringsrc stream=cam ! filesink location={}", output.display()),
    )
    .finish()
    .assert_success();
    writer.finish().assert_success();
    assert_same(&reference(VIDEO), &fs::read(&output).unwrap(), "the named stream");
}

/// Without XDG_RUNTIME_DIR the directory is a private one in the temporary
/// directory; the reader starts first and makes it.
#[test]
fn stream_without_runtime_directory_uses_a_private_temporary_one() {
    let scratch = Scratch::new("stream_tmp");
    let tmp = scratch.path("tmp");
    fs::create_dir(&tmp).unwrap();
    let output = scratch.path("video.raw");
    let launch = |name: &str, description: &str| {
        let mut command = Command::new("gst-launch-1.0");
        command
            .env_remove("XDG_RUNTIME_DIR")
            .env("TMPDIR", &tmp)
            .args(description.split_whitespace());
        Launch::spawn_command(&scratch, name, command)
    };
    let mut reader = launch(
        "reader",
        &format!("shmringsrc stream=cam ! filesink location={}", output.display()),
    );
    reader.wait_until_started();
    let directory = tmp.join(format!("shmring-{}", nix::unistd::geteuid()));
    assert_eq!(fs::metadata(&directory).unwrap().permissions().mode() & 0o777, 0o700);
    let writer = launch("writer", &format!("{VIDEO} ! shmringsink stream=cam"));
    reader.finish().assert_success();
    writer.finish().assert_success();
    assert_same(&reference(VIDEO), &fs::read(&output).unwrap(), "the named stream");
}

#[test]
fn a_stream_directory_open_to_others_is_refused() {
    let scratch = Scratch::new("stream_open_dir");
    let runtime = runtime_dir(&scratch);
    let directory = runtime.join("shmring");
    fs::create_dir(&directory).unwrap();
    fs::set_permissions(&directory, fs::Permissions::from_mode(0o777)).unwrap();
    for element in ["shmringsink", "shmringsrc"] {
        let description = match element {
            "shmringsink" => format!("{VIDEO} ! shmringsink stream=cam"),
            _ => "shmringsrc stream=cam ! fakesink".to_owned(),
        };
        launch_in(&scratch, element, &runtime, &description)
            .finish()
            .assert_failure("chmod 700");
    }
    assert!(
        !directory.join("cam").exists(),
        "a socket was made in the open directory"
    );
}

/// What `element` posts when it fails to start.
fn start_error(element: &gst::Element) -> String {
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    assert!(
        element.set_state(gst::State::Paused).is_err(),
        "{} started",
        element.name()
    );
    let message = bus
        .pop_filtered(&[gst::MessageType::Error])
        .expect("a failed start posts an error");
    let _ = element.set_state(gst::State::Null);
    match message.view() {
        gst::MessageView::Error(err) => format!("{} {:?}", err.error(), err.debug()),
        _ => unreachable!("filtered to errors"),
    }
}

#[test]
fn socket_path_and_stream_together_are_refused() {
    init_gst();
    for factory in ["shmringsink", "shmringsrc"] {
        let element = gst::ElementFactory::make(factory)
            .property("socket-path", "/tmp/unused.sock")
            .property("stream", "cam")
            .build()
            .unwrap();
        let message = start_error(&element);
        assert!(message.contains("both set, and they conflict"), "{factory}: {message}");
    }
}

#[test]
fn stream_names_that_leave_the_directory_are_refused() {
    init_gst();
    for factory in ["shmringsink", "shmringsrc"] {
        for name in ["", ".", "..", "../cam", "a/b"] {
            let element = gst::ElementFactory::make(factory)
                .property("stream", name)
                .build()
                .unwrap();
            let message = start_error(&element);
            assert!(
                message.contains("is not a stream name") && message.contains("no '/'"),
                "{factory} stream={name:?}: {message}"
            );
        }
    }
}

#[test]
fn set_uri_fills_one_property_and_clears_the_other() {
    init_gst();
    for factory in ["shmringsink", "shmringsrc"] {
        let element = gst::ElementFactory::make(factory).build().unwrap();
        let handler = element.dynamic_cast_ref::<gst::URIHandler>().unwrap();
        handler.set_uri("shmring://front%20door").unwrap();
        assert_eq!(
            element.property::<Option<String>>("stream").as_deref(),
            Some("front door")
        );
        assert_eq!(element.property::<Option<String>>("socket-path"), None);
        assert_eq!(handler.uri().as_deref(), Some("shmring://front%20door"));
        handler.set_uri("shmring:///run/cam.sock").unwrap();
        assert_eq!(element.property::<Option<String>>("stream"), None);
        assert_eq!(
            element.property::<Option<String>>("socket-path").as_deref(),
            Some("/run/cam.sock")
        );
        let err = handler.set_uri("shmring://host/cam.sock").unwrap_err();
        assert!(err.matches(gst::URIError::BadUri), "{factory}: {err}");
        assert!(err.message().contains("shmring:///absolute/path"), "{factory}: {err}");
        assert_eq!(
            element.property::<Option<String>>("socket-path").as_deref(),
            Some("/run/cam.sock")
        );
    }
}
