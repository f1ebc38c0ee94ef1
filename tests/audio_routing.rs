//! The audio-routing example (`examples/audio-routing`) run as a user runs
//! it: its scripts, as separate processes, against the plugin cargo built.
//!
//! `many_readers.rs` already shows with plain pipelines that a block-mode
//! recorder is sample-exact and that in drop mode a fast reader loses
//! nothing beside a slow one. Here the same holds for the example's own
//! writer (a live tone), recorder, level meter and slow consumer, and
//! `run-all.sh` is run whole.
//!
//! The recorder starts before the writer, which holds the stream until its
//! first reader connects, so the recording starts at the tone's first
//! sample. It must then equal, sample for sample, a one-process recording
//! of as many buffers: the tone's phase does not repeat after any whole
//! number of buffers within a run, so a buffer lost anywhere would shift
//! every sample after it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Instant;

use common::{DEADLINE, Launch, POLL_INTERVAL, Scratch};

/// Frames per buffer in the tests: 8 KiB buffers (43 ms at 48 kHz), so
/// payloads travel in heap blocks, and a fast reader may fall 32 buffers
/// (1.4 s) behind before the writer drops any for it (a quarter of the
/// default 1 MiB heap, with three readers).
const SAMPLES_PER_BUFFER: usize = 2048;
/// S16LE stereo.
const BYTES_PER_FRAME: usize = 4;
const BUFFER_BYTES: usize = SAMPLES_PER_BUFFER * BYTES_PER_FRAME;
/// Buffers recorded after the slow consumer starts: at ten buffers a second
/// it falls more than 50 behind, more than drop mode lets it.
const SLOW_RUN_BUFFERS: u64 = 100;
/// 437.3 Hz at 48 kHz advances by 34984/1875 periods per buffer: the phase
/// after n buffers repeats only when n is a multiple of 1875 (80 s).
const FREQ: &str = "437.3";

fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/audio-routing")
        .join(file)
}

/// Starts one of the example's scripts, reading or writing `socket`.
fn script(scratch: &Scratch, name: &str, file: &str, socket: &Path, envs: &[(&str, &str)], args: &[&str]) -> Launch {
    let mut command = Command::new(example(file));
    command.env("SOCKET", socket).envs(envs.iter().copied()).args(args);
    Launch::spawn_command(scratch, name, command)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |metadata| metadata.len())
}

/// Waits until `writer`, which must keep running, has written `len` bytes
/// to `path`.
fn wait_for_file_len(writer: &mut Launch, path: &Path, len: u64) {
    let deadline = Instant::now() + DEADLINE;
    while file_len(path) < len {
        writer.assert_running();
        assert!(
            Instant::now() < deadline,
            "the {} wrote {} of {len} bytes within {DEADLINE:?}",
            writer.name,
            file_len(path)
        );
        thread::sleep(POLL_INTERVAL);
    }
}

/// The data chunk of a WAV file, after checking that the RIFF header
/// states the file's size.
fn wav_data(path: &Path) -> Vec<u8> {
    let bytes = fs::read(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    assert!(
        bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "{} is not a RIFF/WAVE file",
        path.display()
    );
    assert_eq!(
        u32_at(4),
        bytes.len() - 8,
        "the RIFF size in {} is not its file size - 8: was the header finished?",
        path.display()
    );
    let mut chunk = 12;
    while chunk + 8 <= bytes.len() {
        let len = u32_at(chunk + 4);
        let start = chunk + 8;
        if &bytes[chunk..chunk + 4] == b"data" {
            assert!(
                start + len <= bytes.len(),
                "the data chunk of {} overruns it",
                path.display()
            );
            return bytes[start..start + len].to_vec();
        }
        chunk = start + len + len % 2;
    }
    panic!("{} has no data chunk", path.display());
}

/// The tone writer.sh sends, recorded in one process: `buffers` buffers.
fn reference_recording(scratch: &Scratch, buffers: usize) -> Vec<u8> {
    let path = scratch.path("reference.wav");
    Launch::spawn(
        scratch,
        "reference",
        &format!(
            "audiotestsrc is-live=false num-buffers={buffers} samplesperbuffer={SAMPLES_PER_BUFFER} wave=sine freq={FREQ} volume=0.5 ! audio/x-raw,format=S16LE,layout=interleaved,rate=48000,channels=2 ! wavenc ! filesink location={}",
            path.display()
        ),
    )
    .finish()
    .assert_success();
    wav_data(&path)
}

/// The number in `text` right after the last `before`, up to `after`.
fn last_number(text: &str, before: &str, after: &str) -> Option<u64> {
    let start = text.rfind(before)? + before.len();
    let end = start + text[start..].find(after)?;
    text[start..end].trim().parse().ok()
}

/// The total the slow consumer printed at its end.
fn slow_consumer_lost(stdout: &str) -> u64 {
    last_number(stdout, "lost ", " buffers in all")
        .unwrap_or_else(|| panic!("the slow consumer printed no total:\n{stdout}"))
}

/// What the level meter printed at its end: `(buffers, lost)`.
fn level_meter_counts(stdout: &str) -> (u64, u64) {
    let buffers = last_number(stdout, "finished: ", " buffers");
    let lost = last_number(stdout, " buffers, ", " lost");
    match (buffers, lost) {
        (Some(buffers), Some(lost)) => (buffers, lost),
        _ => panic!("the level meter printed no counts at its end:\n{stdout}"),
    }
}

/// Runs the example's writer (a live tone, `when_full`) with its three
/// readers; stops the writer with SIGINT once every reader shows it reads
/// (and, in drop mode, the slow consumer has lost buffers), and checks that
/// the recording is sample-exact and that the level meter lost nothing.
/// Returns the buffers the slow consumer lost.
fn route_tone(test: &str, when_full: &str) -> u64 {
    let scratch = Scratch::new(test);
    let socket = scratch.socket();
    let recording = scratch.path("recording.wav");
    let recording_arg = recording.to_str().unwrap();
    let mut recorder = script(&scratch, "recorder", "recorder.sh", &socket, &[], &[recording_arg]);
    let mut writer = script(
        &scratch,
        "writer",
        "writer.sh",
        &socket,
        &[
            ("WHEN_FULL", when_full),
            ("SAMPLES_PER_BUFFER", &SAMPLES_PER_BUFFER.to_string()),
            ("FREQ", FREQ),
        ],
        &[],
    );
    // Prerolled: the recorder has the stream's first buffer, as the only
    // reader yet. The others join the running stream.
    recorder.wait_for_stdout(&["Pipeline is PREROLLED"]);
    let mut level_meter = script(
        &scratch,
        "level meter",
        "level-meter.py",
        &socket,
        &[],
        &["--interval", "200"],
    );
    let mut slow_consumer = script(&scratch, "slow consumer", "slow-consumer.sh", &socket, &[], &[]);
    level_meter.wait_for_stdout(&[" dB"]);
    slow_consumer.wait_for_stdout(&["reading the stream"]);
    // Long enough that, in drop mode, the slow consumer falls further
    // behind than its share of the heap (32 buffers) and must lose some.
    let slow_joined_at = file_len(&recording);
    wait_for_file_len(
        &mut recorder,
        &recording,
        slow_joined_at + SLOW_RUN_BUFFERS * BUFFER_BYTES as u64,
    );
    writer.assert_running();
    // EOS from the writer ends every reader.
    writer.interrupt();
    writer.finish().assert_success();
    let recorder = recorder.finish();
    recorder.assert_success();
    let level_meter = level_meter.finish();
    level_meter.assert_success();
    let slow_consumer = slow_consumer.finish();
    slow_consumer.assert_success();

    let recorded = wav_data(&recording);
    assert!(
        !recorded.is_empty() && recorded.len().is_multiple_of(BUFFER_BYTES),
        "the recording holds {} bytes, not whole buffers of {BUFFER_BYTES}",
        recorded.len()
    );
    let buffers = recorded.len() / BUFFER_BYTES;
    let expected = reference_recording(&scratch, buffers);
    assert!(
        recorded == expected,
        "the recording of {buffers} buffers differs from the tone's first {buffers} buffers"
    );
    let (level_buffers, level_lost) = level_meter_counts(&level_meter.stdout);
    assert!(level_buffers > 0, "the level meter got no buffer");
    assert_eq!(level_lost, 0, "the level meter lost buffers:\n{}", level_meter.stdout);
    let slow_lost = slow_consumer_lost(&slow_consumer.stdout);
    println!(
        "{when_full}: recorded {buffers} buffers sample-exact; level meter {level_buffers} buffers, none lost; slow consumer lost {slow_lost}"
    );
    slow_lost
}

/// `when-full=block` through the scripts: the slowest reader paces the
/// writer, the recording is sample-exact, and nobody loses anything, the
/// slow consumer included.
#[test]
fn block_mode_scripts_record_sample_exact() {
    assert_eq!(
        route_tone("routing-block", "block"),
        0,
        "a reader lost buffers in block mode"
    );
}

/// `when-full=drop` (the example's choice): the slow consumer loses
/// buffers and says so, while the recorder and the level meter beside it
/// lose nothing.
#[test]
fn drop_mode_scripts_spare_the_fast_readers() {
    assert!(route_tone("routing-drop", "drop") > 0, "the slow consumer lost nothing");
}

/// Ctrl-C on the recorder alone (`gst-launch-1.0 -e`) finishes its file:
/// a valid WAV of the tone's first samples, while the writer goes on.
#[test]
fn recorder_finishes_its_file_on_ctrl_c() {
    let scratch = Scratch::new("routing-ctrl-c");
    let socket = scratch.socket();
    let recording = scratch.path("recording.wav");
    let mut recorder = script(
        &scratch,
        "recorder",
        "recorder.sh",
        &socket,
        &[],
        &[recording.to_str().unwrap()],
    );
    let mut writer = script(
        &scratch,
        "writer",
        "writer.sh",
        &socket,
        &[("SAMPLES_PER_BUFFER", &SAMPLES_PER_BUFFER.to_string()), ("FREQ", FREQ)],
        &[],
    );
    // filesink writes in 64 KiB batches: some samples are on disk.
    wait_for_file_len(&mut recorder, &recording, 1);
    recorder.interrupt();
    recorder.finish().assert_success();
    writer.assert_running();
    let recorded = wav_data(&recording);
    assert!(
        !recorded.is_empty() && recorded.len().is_multiple_of(BUFFER_BYTES),
        "the recording holds {} bytes, not whole buffers of {BUFFER_BYTES}",
        recorded.len()
    );
    let buffers = recorded.len() / BUFFER_BYTES;
    assert!(
        recorded == reference_recording(&scratch, buffers),
        "the recording of {buffers} buffers differs from the tone's first {buffers} buffers"
    );
    println!("ctrl-c: recorded {buffers} buffers sample-exact");
    // With no reader left, the writer's EOS would wait for one: kill it.
    writer.kill();
}

/// `run-all.sh 3`: everything starts, stops cleanly and reports.
#[test]
fn run_all_routes_records_meters_and_drops() {
    let scratch = Scratch::new("routing-run-all");
    let output = scratch.path("out");
    let mut command = Command::new(example("run-all.sh"));
    command.arg("3").arg(&output);
    let run_all = Launch::spawn_command(&scratch, "run-all", command).finish();
    run_all.assert_success();

    let recorded = wav_data(&output.join("recording.wav"));
    assert!(!recorded.is_empty(), "the recording holds no samples");
    let log = |name: &str| fs::read_to_string(output.join(format!("{name}.log"))).unwrap_or_default();
    for name in ["writer", "recorder", "level-meter", "slow-consumer"] {
        assert!(
            !log(name).contains("CRITICAL"),
            "the {name} logged a CRITICAL\n{}",
            run_all.describe()
        );
    }
    let level_meter = log("level-meter");
    let level_lines = level_meter.lines().filter(|line| line.ends_with(" dB")).count();
    assert!(level_lines > 0, "the level meter printed no level:\n{level_meter}");
    let slow_consumer = log("slow-consumer");
    let lost = slow_consumer_lost(&slow_consumer);
    assert!(lost > 0, "the slow consumer lost nothing:\n{slow_consumer}");
    assert!(
        run_all.stdout.contains("=== summary"),
        "run-all printed no summary\n{}",
        run_all.describe()
    );
    println!(
        "run-all: {} bytes recorded, {level_lines} level lines, {lost} buffers lost by the slow consumer",
        recorded.len()
    );
}

/// Which of run-switch.sh's two tones (500 Hz, 2000 Hz) a 10 ms buffer of
/// S16LE stereo holds, by the zero crossings of its left channel: 10 or 40.
/// `None` for a buffer of neither (torn, or mixed).
fn switch_tone(buffer: &[u8]) -> Option<u32> {
    let left: Vec<i16> = buffer
        .chunks_exact(BYTES_PER_FRAME)
        .map(|frame| i16::from_le_bytes([frame[0], frame[1]]))
        .collect();
    match left.windows(2).filter(|pair| (pair[0] < 0) != (pair[1] < 0)).count() {
        8..=12 => Some(500),
        36..=44 => Some(2000),
        _ => None,
    }
}

/// switch-recorder.py re-points its PLAYING shmringsrc from one writer.sh
/// to another after 100 buffers: the WAV holds the first tone, then the
/// second, in whole buffers, and the recorder counted two DISCONTs (its
/// first buffer, and the switch) and no error.
#[test]
fn switch_recorder_records_both_writers() {
    const EVERY: usize = 100;
    /// writer.sh's default: 10 ms at 48 kHz.
    const SWITCH_BUFFER: usize = 480 * BYTES_PER_FRAME;
    let scratch = Scratch::new("routing-switch");
    let (first, second) = (scratch.path("a.sock"), scratch.path("b.sock"));
    let no_wait = ("WAIT_FOR_CONNECTION", "false");
    let mut writers = [
        script(
            &scratch,
            "writer-a",
            "writer.sh",
            &first,
            &[no_wait, ("FREQ", "500")],
            &[],
        ),
        script(
            &scratch,
            "writer-b",
            "writer.sh",
            &second,
            &[no_wait, ("FREQ", "2000")],
            &[],
        ),
    ];
    let recording = scratch.path("recording.wav");
    let every = EVERY.to_string();
    let mut command = Command::new(example("switch-recorder.py"));
    command
        .arg(&recording)
        .arg(&first)
        .arg(&second)
        .args(["--every", &every]);
    let mut recorder = Launch::spawn_command(&scratch, "recorder", command);
    recorder.wait_for_stdout(&["switched to"]);
    // As many buffers again from the second writer, and then some: wavenc's
    // header and filesink's batching are not counted.
    wait_for_file_len(&mut recorder, &recording, (3 * EVERY * SWITCH_BUFFER) as u64);
    recorder.interrupt();
    let recorder = recorder.finish();
    recorder.assert_success();
    for writer in &mut writers {
        writer.assert_running();
        writer.interrupt();
    }
    for writer in writers {
        writer.finish().assert_success();
    }

    let data = wav_data(&recording);
    assert_eq!(data.len() % SWITCH_BUFFER, 0, "the recording holds a partial buffer");
    let tones: Vec<_> = data.chunks_exact(SWITCH_BUFFER).map(switch_tone).collect();
    let torn: Vec<usize> = (0..tones.len()).filter(|&index| tones[index].is_none()).collect();
    assert!(torn.is_empty(), "buffers of neither tone at {torn:?}");
    let switch = tones
        .iter()
        .position(|tone| *tone == Some(2000))
        .expect("the second writer's tone is in the recording");
    assert!(
        switch >= EVERY,
        "the switch came after {switch} buffers, before {EVERY}"
    );
    assert!(
        tones[..switch].iter().all(|tone| *tone == Some(500)) && tones[switch..].iter().all(|tone| *tone == Some(2000)),
        "the recording is not the first tone, then the second"
    );
    assert!(
        recorder.stdout.contains(" 2 DISCONT, 1 switches"),
        "the recorder did not count two DISCONTs and one switch\n{}",
        recorder.describe()
    );
}

/// `run-switch.sh 3`: both writers and the recorder start, stop cleanly
/// and report.
#[test]
fn run_switch_records_and_reports() {
    let scratch = Scratch::new("routing-run-switch");
    let output = scratch.path("out");
    let mut command = Command::new(example("run-switch.sh"));
    command.arg("3").arg(&output);
    let run_switch = Launch::spawn_command(&scratch, "run-switch", command).finish();
    run_switch.assert_success();
    assert!(
        !wav_data(&output.join("recording.wav")).is_empty(),
        "the recording holds no samples"
    );
    for name in ["writer-a", "writer-b", "recorder"] {
        let log = fs::read_to_string(output.join(format!("{name}.log"))).unwrap_or_default();
        assert!(!log.contains("CRITICAL"), "the {name} logged a CRITICAL:\n{log}");
    }
    assert!(
        run_switch.stdout.contains("=== summary") && run_switch.stdout.contains("finished:"),
        "run-switch printed no summary\n{}",
        run_switch.describe()
    );
}
