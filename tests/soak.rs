//! A soak test: a writer process pushes sequence-numbered buffers of random
//! sizes, from 1 byte to a quarter of the heap, each carrying its sequence
//! number, length and a checksum of the rest; a reader in this process
//! stalls at random and keeps random buffers for random times, as
//! applications do. Nothing may be lost, reordered or corrupted, and a
//! kept buffer must stay intact until it is dropped.
//!
//! The writer is this test binary started again (see `soak_writer_child`),
//! with the plugin registered statically; the reader is an appsink here.
//! The raw-audio caps make the reader hand blocks out as leases rather than
//! copies, so that kept buffers pin heap blocks.
//!
//! The default run moves 200,000 buffers. `SHMRING_SOAK_BUFFERS` sets the
//! count for the long run, `soak_long` (ignored by default; 10,000,000
//! buffers unless the variable says otherwise), best run with `--release`:
//!
//! ```text
//! SHMRING_SOAK_BUFFERS=10000000 cargo test --release --test soak -- --ignored soak_long --nocapture
//! ```

use std::collections::VecDeque;
use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use gst::prelude::*;

mod common;
use common::*;

/// The heap. Buffers are up to a quarter of it.
const HEAP: u64 = 256 << 10;
const MAX_BUFFER: u64 = HEAP / 4;
/// Each buffer of at least this many bytes starts with its sequence
/// number, its length and the checksum of the bytes after them.
const HEADER: usize = 24;
/// Any byte format would do; raw audio is what lets the reader lease blocks.
const CAPS: &str = "audio/x-raw,format=U8,rate=48000,channels=1,layout=interleaved";
/// How long the reader may go without a buffer before the test calls it a
/// hang, whatever the count.
const STALL_WATCHDOG: Duration = Duration::from_secs(60);
/// The reader keeps at most this many buffers, each for up to
/// `MAX_KEEP_TIME`.
const MAX_KEPT: usize = 48;
const MAX_KEEP_TIME: Duration = Duration::from_millis(30);
/// Sizes and payloads come from this seed, on both sides.
const SEED: u64 = 0x50a4_2026;

/// The writer child reads its job from these.
const ENV_SOCKET: &str = "SHMRING_SOAK_WRITER_SOCKET";
const ENV_COUNT: &str = "SHMRING_SOAK_WRITER_BUFFERS";

/// The size of every buffer in turn: log-uniform from 1 byte to
/// `MAX_BUFFER`, so that tiny inline records, blocks of every size and a
/// nearly full heap all occur often.
struct Sizes(Rng);

impl Sizes {
    fn new() -> Self {
        Self(Rng(SEED))
    }

    fn next(&mut self) -> usize {
        let bits = MAX_BUFFER.ilog2() + 1;
        let scale = 1u64 << self.0.below(u64::from(bits));
        (1 + self.0.below(scale)).min(MAX_BUFFER) as usize
    }
}

/// A checksum of `bytes`, word by word.
fn checksum(bytes: &[u8]) -> u64 {
    let mut sum = 0xcbf2_9ce4_8422_2325u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().expect("chunks of 8"));
        sum = (sum.rotate_left(5) ^ word).wrapping_mul(0x0100_0000_01b3);
    }
    for &byte in words.remainder() {
        sum = (sum.rotate_left(5) ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    sum
}

/// Fills `dest` with buffer `seq`'s bytes: a header, then bytes that depend
/// on `seq`. Buffers shorter than the header are just such bytes.
fn fill(seq: u64, dest: &mut [u8]) {
    let start = if dest.len() >= HEADER { HEADER } else { 0 };
    let mut state = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ SEED;
    let mut words = dest[start..].chunks_exact_mut(8);
    for word in &mut words {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        word.copy_from_slice(&(state ^ (state >> 29)).to_le_bytes());
    }
    let tail = (state ^ 0xff).to_le_bytes();
    let remainder = words.into_remainder();
    let tail_len = remainder.len();
    remainder.copy_from_slice(&tail[..tail_len]);
    if start == HEADER {
        let sum = checksum(&dest[HEADER..]);
        dest[0..8].copy_from_slice(&seq.to_le_bytes());
        let len = dest.len() as u64;
        dest[8..16].copy_from_slice(&len.to_le_bytes());
        dest[16..24].copy_from_slice(&sum.to_le_bytes());
    }
}

/// Checks that `bytes` are buffer `seq`'s, `len` bytes long.
fn verify(seq: u64, len: usize, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() != len {
        return Err(format!("buffer {seq} has {} bytes instead of {len}", bytes.len()));
    }
    if len < HEADER {
        let mut expected = vec![0; len];
        fill(seq, &mut expected);
        return if bytes == expected {
            Ok(())
        } else {
            Err(format!("buffer {seq} ({len} bytes) is {bytes:?}, not {expected:?}"))
        };
    }
    let field = |index: usize| u64::from_le_bytes(bytes[8 * index..8 * index + 8].try_into().expect("8 bytes"));
    let (their_seq, their_len, their_sum) = (field(0), field(1), field(2));
    let sum = checksum(&bytes[HEADER..]);
    if their_seq != seq || their_len != len as u64 || their_sum != sum {
        return Err(format!(
            "buffer {seq} ({len} bytes) is corrupt: its header says buffer {their_seq} of {their_len} bytes \
             with checksum {their_sum:#x}, and its bytes sum to {sum:#x}"
        ));
    }
    Ok(())
}

/// The writer: pushes `count` buffers into a shmringsink, then EOS. Runs
/// only in the child that `soak` starts, which sets `ENV_SOCKET`; started
/// any other way it has nothing to do.
#[test]
#[ignore = "the writer half of the soak tests, run in a child process that they start"]
fn soak_writer_child() {
    let (Ok(socket), Ok(count)) = (std::env::var(ENV_SOCKET), std::env::var(ENV_COUNT)) else {
        return;
    };
    let count: u64 = count.parse().expect("the parent passes a count");
    init_gst();
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time block=true max-bytes={HEAP} caps={CAPS} \
         ! shmringsink name=sink socket-path={socket} ring-size={HEAP}"
    ))
    .expect("the writer pipeline parses")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let src = pipeline
        .by_name("src")
        .and_then(|src| src.downcast::<gst_app::AppSrc>().ok())
        .expect("an appsrc named src");
    // An error stops appsrc's streaming thread, and a push would then wait
    // forever for room: the child reports the error and exits at once.
    pipeline.bus().expect("a bus").set_sync_handler(|_, message| {
        if let gst::MessageView::Error(err) = message.view() {
            eprintln!("the soak writer failed: {} ({:?})", err.error(), err.debug());
            std::process::exit(1);
        }
        gst::BusSyncReply::Pass
    });
    pipeline.set_state(gst::State::Playing).expect("the writer starts");
    let mut sizes = Sizes::new();
    for seq in 0..count {
        let len = sizes.next();
        let mut buffer = gst::Buffer::with_size(len).expect("a buffer");
        {
            let buffer = buffer.get_mut().expect("a new buffer is writable");
            buffer.set_offset(seq);
            let mut map = buffer.map_writable().expect("a new buffer maps");
            fill(seq, &mut map);
        }
        src.push_buffer(buffer)
            .unwrap_or_else(|err| panic!("pushing buffer {seq}: {err:?}"));
    }
    src.end_of_stream().expect("EOS is accepted");
    let bus = pipeline.bus().expect("a bus");
    let message = bus.timed_pop_filtered(
        gst::ClockTime::from_nseconds(DEADLINE.as_nanos() as u64),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let outcome = match message.as_ref().map(|message| message.view()) {
        Some(gst::MessageView::Eos(_)) => Ok(()),
        Some(gst::MessageView::Error(err)) => Err(format!("{} ({:?})", err.error(), err.debug())),
        _ => Err(format!("no EOS within {DEADLINE:?}")),
    };
    pipeline.set_state(gst::State::Null).expect("the writer stops");
    if let Err(err) = outcome {
        panic!("the soak writer failed: {err}");
    }
    assert_no_criticals_here("the soak writer");
}

/// The writer child, killed if the test fails before it exits.
struct WriterChild {
    child: Child,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
}

impl WriterChild {
    fn spawn(scratch: &Scratch, socket: &str, count: u64) -> Self {
        let stdout = scratch.path("writer.stdout");
        let stderr = scratch.path("writer.stderr");
        let file = |path: &std::path::Path| File::create(path).expect("creating an output file");
        let child = Command::new(std::env::current_exe().expect("the test binary knows its path"))
            .args([
                "--exact",
                "soak_writer_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV_SOCKET, socket)
            .env(ENV_COUNT, count.to_string())
            .env("G_DEBUG", "fatal-criticals")
            .stdin(Stdio::null())
            .stdout(file(&stdout))
            .stderr(file(&stderr))
            .spawn()
            .expect("starting the writer child");
        Self { child, stdout, stderr }
    }

    /// The writer's output, once it exited or after a few seconds: a
    /// reader's failure is often the writer's, which it reports as it exits.
    fn describe_when_done(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            match self.child.try_wait() {
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL_INTERVAL),
                Ok(None) => break "still running".to_owned(),
                Ok(Some(status)) => break status.to_string(),
                Err(err) => break err.to_string(),
            }
        };
        format!("the writer child: {status}\n{}", self.describe())
    }

    fn describe(&self) -> String {
        let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
        describe("writer child", &read(&self.stdout), &read(&self.stderr))
    }

    /// Fails the test if the writer died.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("polling the writer child") {
            panic!("the writer child exited early ({status})\n{}", self.describe());
        }
    }

    /// Waits for the writer to exit, and fails the test unless it succeeded.
    fn finish(mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the writer child") {
                assert!(
                    status.success(),
                    "the writer child failed ({status})\n{}",
                    self.describe()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the writer child did not exit\n{}",
                self.describe()
            );
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for WriterChild {
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|status| status.is_none()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A buffer the reader keeps for a while.
struct Kept {
    sample: gst::Sample,
    seq: u64,
    len: usize,
    until: Instant,
}

fn verify_sample(sample: &gst::Sample, seq: u64, len: usize) -> Result<(), String> {
    let buffer = sample.buffer().ok_or("a sample without a buffer")?;
    let map = buffer.map_readable().map_err(|err| err.to_string())?;
    verify(seq, len, &map)
}

/// Moves `count` buffers from a writer child to a reader here that
/// misbehaves at random, and checks every one.
fn soak(test: &str, count: u64) {
    init_gst();
    let scratch = Scratch::new(test);
    let socket = scratch.socket();
    let socket = socket.to_str().expect("scratch paths are UTF-8").to_owned();
    let mut writer = WriterChild::spawn(&scratch, &socket, count);
    let pipeline = gst::parse::launch(&format!(
        "shmringsrc name=src socket-path={socket} ! appsink name=sink sync=false max-buffers=64"
    ))
    .expect("the reader pipeline parses")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let sink = pipeline
        .by_name("sink")
        .and_then(|sink| sink.downcast::<gst_app::AppSink>().ok())
        .expect("an appsink named sink");
    pipeline.set_state(gst::State::Playing).expect("the reader starts");
    let bus = pipeline.bus().expect("a bus");
    let stop = |message: String| -> ! {
        let _ = pipeline.set_state(gst::State::Null);
        panic!("{message}");
    };

    let mut sizes = Sizes::new();
    let mut misbehaviour = Rng(SEED ^ 0xdead_beef);
    let mut kept: VecDeque<Kept> = VecDeque::new();
    let (mut next_seq, mut bytes, mut stalls, mut kept_total) = (0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    let mut last_buffer = Instant::now();
    let progress_every = (count / 10).max(1);
    loop {
        if let Some(message) = bus.pop_filtered(&[gst::MessageType::Error])
            && let gst::MessageView::Error(err) = message.view()
        {
            stop(format!(
                "the reader failed after {next_seq} buffers: {} ({:?})\n{}",
                err.error(),
                err.debug(),
                writer.describe_when_done()
            ));
        }
        // Kept buffers go when their time is up, whether or not more
        // came: a reader that let go only when it got more could wait
        // forever for a writer that waits for it. Each must still hold
        // what it held.
        let now = Instant::now();
        while kept
            .front()
            .is_some_and(|oldest| oldest.until <= now || kept.len() >= MAX_KEPT)
        {
            let oldest = kept.pop_front().expect("checked above");
            if let Err(err) = verify_sample(&oldest.sample, oldest.seq, oldest.len) {
                stop(format!("a kept buffer changed before it was dropped: {err}"));
            }
        }
        let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(5)) else {
            if sink.is_eos() {
                break;
            }
            writer.assert_running();
            if last_buffer.elapsed() > STALL_WATCHDOG {
                stop(format!(
                    "no buffer for {STALL_WATCHDOG:?} after {next_seq} of {count}: the stream hung\n{}",
                    writer.describe()
                ));
            }
            continue;
        };
        last_buffer = Instant::now();
        let seq = sample.buffer().map_or(u64::MAX, |buffer| buffer.offset());
        if seq != next_seq {
            let what = if seq > next_seq { "lost" } else { "reordered" };
            stop(format!("buffers {what}: got buffer {seq} where {next_seq} was due"));
        }
        if next_seq == count {
            stop(format!("got buffer {seq} after the last, {}", count - 1));
        }
        let len = sizes.next();
        if let Err(err) = verify_sample(&sample, seq, len) {
            stop(err);
        }
        next_seq += 1;
        bytes += len as u64;
        if next_seq % progress_every == 0 {
            println!("{test}: {next_seq} of {count} buffers after {:.1?}", started.elapsed());
        }

        let now = Instant::now();
        if misbehaviour.below(32) == 0 {
            kept_total += 1;
            let hold = Duration::from_micros(misbehaviour.below(MAX_KEEP_TIME.as_micros() as u64));
            kept.push_back(Kept {
                sample,
                seq,
                len,
                until: now + hold,
            });
        }
        if misbehaviour.below(1000) == 0 {
            stalls += 1;
            thread::sleep(Duration::from_micros(1000 + misbehaviour.below(9000)));
        }
    }
    if next_seq != count {
        // GstBaseSrc sends EOS downstream when it fails.
        let error = bus
            .pop_filtered(&[gst::MessageType::Error])
            .map(|message| format!("{message:?}"))
            .unwrap_or_default();
        stop(format!(
            "EOS after {next_seq} buffers of {count}: the rest were lost {error}\n{}",
            writer.describe_when_done()
        ));
    }
    for kept in kept.drain(..) {
        if let Err(err) = verify_sample(&kept.sample, kept.seq, kept.len) {
            stop(format!("a kept buffer changed before it was dropped: {err}"));
        }
    }
    let stats = pipeline
        .by_name("src")
        .expect("the shmringsrc is named src")
        .property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).expect("the reader stops");
    writer.finish();
    assert_no_criticals_here("the reader");
    println!(
        "{test}: {count} buffers, {bytes} bytes in {:.1?}: 0 lost, 0 reordered, 0 corrupt; \
         the reader stalled {stalls} times and kept {kept_total} buffers; reader stats {stats}",
        started.elapsed()
    );
}

#[test]
fn soak_200k_buffers() {
    soak("soak", 200_000);
}

#[test]
#[ignore = "long: 10,000,000 buffers (or SHMRING_SOAK_BUFFERS); run with --release"]
fn soak_long() {
    let count = std::env::var("SHMRING_SOAK_BUFFERS").ok().map_or(10_000_000, |count| {
        count.parse().expect("SHMRING_SOAK_BUFFERS is a count")
    });
    soak("soak-long", count);
}
