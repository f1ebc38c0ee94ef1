//! Processes die without warning: a reader or a writer is killed with
//! SIGKILL at random points while frames flow. These tests pin down what
//! the ring promises then:
//!
//! - a killed reader costs the writer nothing: it goes on rendering, gets
//!   back every heap block the reader held, and the next reader starts at a
//!   clean point of the stream (caps, then segment, then data);
//! - a killed writer ends its reader promptly with an error that says so,
//!   never with a crash or a hang.
//!
//! Readers run as `gst-launch-1.0` children. The writer of the reader-kill
//! tests runs in this process, so that its `stats` (`held-bytes`) can be
//! read; the writers of the writer-kill tests are children, since they are
//! the ones killed. Kill points come from a fixed-seed generator, so a
//! failing run can be repeated.
//!
//! Nothing here asserts a duration: waits have generous watchdogs that only
//! turn a hang into a failure. The time from a writer's death to its
//! reader's exit is measured and printed (run with `--nocapture`).
//!
//! `SHMRING_KILLS` sets how many kills each test makes (default 100).

use std::os::unix::process::ExitStatusExt;
use std::thread;
use std::time::{Duration, Instant};

use gst::prelude::*;

mod common;
use common::*;

/// How long a writer may take to get back the blocks of a killed reader,
/// or a reader to exit after its writer was killed, before the test calls
/// it a hang. The target for the reader is 1 s; this only catches hangs.
const WATCHDOG: Duration = Duration::from_secs(10);
/// Small frames, so that a hundred kills fit in CI time: 64x48 I420 is
/// 4608 bytes, above the inline limit, so every frame travels in a block.
const SMALL_VIDEO: &str = "video/x-raw,format=I420,width=64,height=48,framerate=200/1";
/// A heap of about 28 such frames: the writer runs out of free blocks soon
/// after its reader stops giving them back, and a block the writer failed
/// to get back would soon starve it.
const SMALL_HEAP: u64 = 128 << 10;

/// How many kills a test makes: `SHMRING_KILLS`, or 100.
fn kill_count() -> usize {
    match std::env::var("SHMRING_KILLS") {
        Ok(count) => count
            .parse()
            .unwrap_or_else(|err| panic!("SHMRING_KILLS={count:?} is not a count: {err}")),
        Err(_) => 100,
    }
}

/// An in-process pipeline, stopped when dropped, also when a test fails.
struct Pipeline(gst::Pipeline);

impl Pipeline {
    fn launch(description: &str) -> Self {
        init_gst();
        let pipeline = gst::parse::launch(description)
            .unwrap_or_else(|err| panic!("parsing {description:?}: {err}"))
            .downcast::<gst::Pipeline>()
            .expect("a description with several elements makes a pipeline");
        pipeline
            .set_state(gst::State::Playing)
            .unwrap_or_else(|err| panic!("starting {description:?}: {err}"));
        Self(pipeline)
    }

    /// Fails the test if the pipeline posted an error.
    fn assert_no_error(&self, what: &str) {
        let bus = self.0.bus().expect("a pipeline has a bus");
        if let Some(message) = bus.pop_filtered(&[gst::MessageType::Error])
            && let gst::MessageView::Error(err) = message.view()
        {
            panic!(
                "the {what} failed: {} ({:?})",
                err.error(),
                err.debug().unwrap_or_default()
            );
        }
    }

    fn sink_counter(&self, field: &str) -> u64 {
        let stats = self
            .0
            .by_name("sink")
            .expect("the writer's shmringsink is named sink")
            .property::<gst::Structure>("stats");
        stats
            .get::<u64>(field)
            .unwrap_or_else(|err| panic!("stats {stats} lack a u64 {field}: {err}"))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// The kinds of what a `fakesink silent=false` under `gst-launch-1.0 -v`
/// printed, in order: "caps", "segment", "buffer" or another event's name.
fn fakesink_sequence(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter_map(|line| line.split_once("last-message = ").map(|(_, message)| message))
        .map(|message| {
            if message.starts_with("chain") {
                "buffer"
            } else if let Some((_, event)) = message.split_once("(type: ") {
                event.split_whitespace().next().unwrap_or("?")
            } else {
                "?"
            }
        })
        .collect()
}

/// Asserts that a reader's downstream got the caps, then a segment, then
/// data: a clean start, whatever the point of the stream it joined at.
fn assert_clean_start(reader: &Launch) {
    let stdout = reader.stdout_text();
    let sequence = fakesink_sequence(&stdout);
    let first = |kind: &str| sequence.iter().position(|&seen| seen == kind);
    let (caps, segment, buffer) = (first("caps"), first("segment"), first("buffer"));
    assert!(
        matches!((caps, segment, buffer), (Some(caps), Some(segment), Some(buffer)) if caps < segment && segment < buffer),
        "the {} did not start with caps, then a segment, then data: it got {:?}\n{}",
        reader.name,
        &sequence[..sequence.len().min(12)],
        reader.describe()
    );
}

/// A reader that prints every event and buffer its sink gets. Its
/// `identity` slows it down, so that the writer runs ahead and waits for
/// blocks: it then holds every block the heap has when it is killed.
fn spawn_printing_reader(scratch: &Scratch, name: &str, socket: &str, slow: bool) -> Launch {
    let pace = if slow { "identity sleep-time=2000 !" } else { "" };
    Launch::spawn(
        scratch,
        name,
        &format!("-v shmringsrc socket-path={socket} is-live=true ! {pace} fakesink silent=false sync=false"),
    )
}

/// Waits until the writer holds no block for a reader: every block of the
/// killed one came back. Returns how long that took.
fn wait_until_blocks_back(writer: &Pipeline, kill: usize) -> Duration {
    let start = Instant::now();
    loop {
        writer.assert_no_error("in-process writer");
        if writer.sink_counter("held-bytes") == 0 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WATCHDOG,
            "after kill {kill} the writer still holds {} bytes for readers after {WATCHDOG:?}",
            writer.sink_counter("held-bytes")
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// When the next reader starts after a kill.
#[derive(Clone, Copy, PartialEq)]
enum NextReader {
    /// Once the writer has every block back, which is checked.
    AfterBlocksBack,
    /// At once, while the writer may not know yet that the last one died:
    /// it must serve the new one all the same, not turn it away as "busy".
    /// Blocks are checked after the last kill.
    AtOnce,
}

/// A run of reader kills.
struct ReaderKills {
    test: &'static str,
    /// The writer's source, before the caps filter.
    writer_source: &'static str,
    /// The writer's `ring-size`; 0 sizes the heap from the caps.
    ring_size: u64,
    /// Whether readers are slower than the writer.
    slow_readers: bool,
    next_reader: NextReader,
    seed: u64,
}

impl ReaderKills {
    /// Kills readers of one long-lived in-process writer, each at a random
    /// point while it reads, and checks that the writer gets every block
    /// back and serves the next reader from a clean start.
    fn run(self) {
        let Self {
            test,
            writer_source,
            ring_size,
            slow_readers,
            next_reader,
            seed,
        } = self;
        let scratch = Scratch::new(test);
        let socket = scratch.socket();
        let socket = socket.to_str().expect("scratch paths are UTF-8");
        let writer = Pipeline::launch(&format!(
            "{writer_source} ! {SMALL_VIDEO} ! shmringsink name=sink socket-path={socket} ring-size={ring_size}"
        ));
        let mut rng = Rng(seed);
        let kills = kill_count();
        let mut back_times = Vec::with_capacity(kills);
        let mut rendered = 0;
        let started = Instant::now();
        for kill in 0..kills {
            let mut reader = spawn_printing_reader(&scratch, &format!("reader-{kill}"), socket, slow_readers);
            // Frames reach this reader: the writer did not hang on the last
            // one, nor turn this one away.
            reader.wait_for_stdout(&["last-message = chain"]);
            assert_clean_start(&reader);
            let now_rendered = writer.sink_counter("buffers");
            assert!(
                now_rendered > rendered,
                "reader {kill} got frames, yet the writer's buffer count did not move from {rendered}"
            );
            rendered = now_rendered;
            thread::sleep(rng.delay(Duration::from_millis(150)));
            reader.assert_running();
            reader.kill();
            assert!(
                !reader.stderr_text().contains("CRITICAL"),
                "the {} logged a CRITICAL\n{}",
                reader.name,
                reader.describe()
            );
            if next_reader == NextReader::AfterBlocksBack || kill + 1 == kills {
                back_times.push(wait_until_blocks_back(&writer, kill));
            }
        }
        writer.assert_no_error("in-process writer");
        drop(writer);
        assert_no_criticals_here("this process");
        back_times.sort();
        println!(
            "{test}: {kills} readers killed in {:.1?}; writer rendered {rendered} frames; \
             kill -> all blocks back ({} times): median {:?}, max {:?}",
            started.elapsed(),
            back_times.len(),
            back_times.get(back_times.len() / 2).copied().unwrap_or_default(),
            back_times.last().copied().unwrap_or_default()
        );
    }
}

/// The writer runs as fast as its slow readers read, so it is always
/// waiting for a block or for room when a reader dies.
#[test]
fn killed_readers_give_back_every_block_to_a_fast_writer() {
    ReaderKills {
        test: "kill-readers-fast",
        writer_source: "videotestsrc is-live=false pattern=ball",
        ring_size: SMALL_HEAP,
        slow_readers: true,
        next_reader: NextReader::AfterBlocksBack,
        seed: 0x5eed_0001,
    }
    .run();
}

/// The writer renders 200 frames a second and its readers keep up, so a
/// reader usually dies while the writer has room; with the small heap the
/// writer soon runs out of blocks and waits on the dead reader.
#[test]
fn killed_readers_give_back_every_block_to_a_live_writer() {
    ReaderKills {
        test: "kill-readers-live",
        writer_source: "videotestsrc is-live=true pattern=ball",
        ring_size: SMALL_HEAP,
        slow_readers: false,
        next_reader: NextReader::AfterBlocksBack,
        seed: 0x5eed_0002,
    }
    .run();
}

/// As above, with the default heap of 16 MiB, about 3,600 of these frames:
/// the writer has free blocks for long after a reader dies, so only its
/// own look at the reader's socket can tell it that the reader is gone.
#[test]
fn killed_readers_give_back_every_block_to_a_live_writer_with_a_large_heap() {
    ReaderKills {
        test: "kill-readers-live-large-heap",
        writer_source: "videotestsrc is-live=true pattern=ball",
        ring_size: 0,
        slow_readers: false,
        next_reader: NextReader::AfterBlocksBack,
        seed: 0x5eed_0004,
    }
    .run();
}

/// Each new reader connects right after the kill of the last one, before
/// the writer may have noticed it: the writer serves it, never answering
/// "busy" because of a reader that is gone.
#[test]
fn a_reader_started_right_after_a_kill_is_served() {
    ReaderKills {
        test: "kill-readers-at-once",
        writer_source: "videotestsrc is-live=true pattern=ball",
        ring_size: 0,
        slow_readers: false,
        next_reader: NextReader::AtOnce,
        seed: 0x5eed_0005,
    }
    .run();
}

/// What a reader does when its writer dies without EOS.
#[derive(Clone, Copy, Debug)]
enum OnWriterDeath {
    /// It fails, saying that the writer went away (the current behaviour).
    Fails,
}

impl OnWriterDeath {
    /// Extra `shmringsrc` properties for this behaviour.
    fn reader_properties(self) -> &'static str {
        match self {
            OnWriterDeath::Fails => "",
        }
    }

    /// Checks how the reader ended.
    fn assert_ended(self, reader: &Finished) {
        assert!(
            reader.status.signal().is_none(),
            "the {} was killed by signal {:?} (a crash) instead of exiting\n{}",
            reader.name,
            reader.status.signal(),
            reader.describe()
        );
        match self {
            OnWriterDeath::Fails => {
                reader.assert_failure("The shmringsink went away without sending EOS");
            }
        }
    }
}

/// Kills writers, each at a random point while its reader reads, and
/// measures how long the reader takes to end after the kill.
fn kill_writers(test: &str, on_death: OnWriterDeath, seed: u64) {
    let scratch = Scratch::new(test);
    let socket = scratch.socket();
    let socket = socket.to_str().expect("scratch paths are UTF-8");
    let mut rng = Rng(seed);
    let kills = kill_count();
    let mut exit_times = Vec::with_capacity(kills);
    let started = Instant::now();
    for kill in 0..kills {
        // The socket path stays the same: each writer replaces the socket
        // its killed predecessor left behind.
        let mut writer = start_writer(
            &scratch,
            &format!(
                "videotestsrc is-live=true pattern=ball ! {SMALL_VIDEO} ! shmringsink socket-path={socket} ring-size={SMALL_HEAP}"
            ),
        );
        let mut reader = Launch::spawn(
            &scratch,
            &format!("reader-{kill}"),
            &format!(
                "-v shmringsrc socket-path={socket} is-live=true {} ! fakesink silent=false sync=false",
                on_death.reader_properties()
            ),
        );
        reader.wait_for_stdout(&["last-message = chain"]);
        thread::sleep(rng.delay(Duration::from_millis(150)));
        reader.assert_running();
        let killed = Instant::now();
        writer.kill();
        let status = loop {
            if let Some(status) = reader.exited() {
                break status;
            }
            assert!(
                killed.elapsed() < WATCHDOG,
                "the {} still runs {WATCHDOG:?} after its writer was killed (kill {kill})\n{}",
                reader.name,
                reader.describe()
            );
            thread::sleep(Duration::from_millis(1));
        };
        exit_times.push(killed.elapsed());
        let reader = reader.finish();
        assert_eq!(reader.status, status);
        on_death.assert_ended(&reader);
    }
    exit_times.sort();
    let over_target = exit_times.iter().filter(|time| **time > Duration::from_secs(1)).count();
    println!(
        "{test}: {kills} writers killed in {:.1?}; kill -> reader exit: median {:?}, max {:?}, {over_target} over 1 s",
        started.elapsed(),
        exit_times.get(exit_times.len() / 2).copied().unwrap_or_default(),
        exit_times.last().copied().unwrap_or_default()
    );
}

#[test]
fn killed_writers_end_their_readers_with_an_error() {
    kill_writers("kill-writers", OnWriterDeath::Fails, 0x5eed_0003);
}

/// With `on-disconnect=wait`, one reader outlives writers killed at random
/// points, one after the other: after each kill it says it waits, within
/// the watchdog, keeps running, and reads from the next writer. The last
/// writer ends with EOS, which ends the reader cleanly.
#[test]
fn killed_writers_are_waited_for_by_one_reader() {
    let scratch = Scratch::new("kill-writers-wait");
    let socket = scratch.socket();
    let socket = socket.to_str().expect("scratch paths are UTF-8");
    let mut rng = Rng(0x5eed_0004);
    let kills = kill_count();
    let writer_description = |tail: &str| {
        format!(
            "videotestsrc is-live=true pattern=ball {tail} ! {SMALL_VIDEO} ! shmringsink socket-path={socket} ring-size={SMALL_HEAP}"
        )
    };
    let mut writer = start_writer(&scratch, &writer_description(""));
    let mut reader = Launch::spawn(
        &scratch,
        "waiting reader",
        &format!(
            "-v shmringsrc socket-path={socket} is-live=true on-disconnect=wait ! fakesink silent=false sync=false"
        ),
    );
    let count = |text: &str, needle: &str| text.matches(needle).count();
    let mut wait_times = Vec::with_capacity(kills);
    let mut chains_seen = 0;
    for kill in 0..kills {
        // A buffer from this writer has arrived.
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if count(&reader.stdout_text(), "last-message = chain") > chains_seen {
                break;
            }
            reader.assert_running();
            assert!(
                Instant::now() < deadline,
                "no buffer from writer {kill}\n{}",
                reader.describe()
            );
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(rng.delay(Duration::from_millis(100)));
        let killed = Instant::now();
        writer.kill();
        loop {
            let stdout = reader.stdout_text();
            if count(&stdout, "waiting for a writer to come back") > kill {
                chains_seen = count(&stdout, "last-message = chain");
                break;
            }
            reader.assert_running();
            assert!(
                killed.elapsed() < WATCHDOG,
                "the reader did not notice writer {kill} die\n{}",
                reader.describe()
            );
            thread::sleep(Duration::from_millis(5));
        }
        wait_times.push(killed.elapsed());
        writer = start_writer(
            &scratch,
            &writer_description(if kill + 1 == kills { "num-buffers=20" } else { "" }),
        );
    }
    writer.finish().assert_success();
    let reader = reader.finish();
    reader.assert_success();
    wait_times.sort();
    println!(
        "{kills} writers killed under one waiting reader; kill -> reader waiting: median {:?}, max {:?}",
        wait_times[wait_times.len() / 2],
        wait_times[wait_times.len() - 1]
    );
}
