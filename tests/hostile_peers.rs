//! Hostile and broken peers, as real second processes.
//!
//! A helper process, this test binary run again with `HOSTILE_PEER` set
//! (see `hostile_peer_helper`), plays one side of the ring with the crate's
//! own `ring` and `ipc` modules, first by the rules and then against them:
//!
//! - a hostile **writer** serves a real `gst-launch-1.0 shmringsrc`, sends a
//!   valid stream, then rewrites positions, record headers, lengths, block
//!   offsets, sleep sequences and heap bytes at random (fixed seeds), waking
//!   the reader after each store. The reader must
//!   end with an element error that names the cause, never by a signal,
//!   never with a GStreamer-CRITICAL, and never hang;
//! - a hostile **reader** reads from a real `gst-launch-1.0 ... !
//!   shmringsink`, then releases blocks it never held, releases twice,
//!   moves its read position outside the queue or scribbles over everything
//!   it can write. The writer must drop it with a warning naming the
//!   offence and go on streaming: a well-behaved reader that comes next gets
//!   the right frames.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use gstshmring::codec;
use gstshmring::ipc::{self, Connection, HelloStatus, Listener};
use gstshmring::ring::layout::*;
use gstshmring::ring::{
    self, ChannelSizes, HeapBooks, HeapMemory, Notifier, Payload, Producer, ReaderChannel, ReceivedFds, RecordHeader,
    RecordKind, ReleaseConsumer,
};

use common::{Launch, POLL_INTERVAL, Rng, Scratch, describe, start_writer};

/// How long a process of these tests may take for its part: far above what
/// each needs, it only turns a hang into a failure.
const WATCHDOG: Duration = Duration::from_secs(30);
/// The helper's role: `writer` or `reader`.
const ROLE_VAR: &str = "HOSTILE_PEER";
const SOCKET_VAR: &str = "HOSTILE_PEER_SOCKET";
const SEED_VAR: &str = "HOSTILE_PEER_SEED";
const MODE_VAR: &str = "HOSTILE_PEER_MODE";
/// What a helper prints once its peer has taken the valid part of the
/// exchange, and once it was dropped.
const VALID_PART_DONE: &str = "valid part done";
const DROPPED: &str = "dropped by the writer";

/// A value for a position, length or offset near `near`: aligned or not,
/// inside the queue or heap or far outside.
fn value_near(rng: &mut Rng, near: u64) -> u64 {
    let step = rng.below(1 << 12);
    match rng.below(6) {
        0 => near.wrapping_add(step * RECORD_ALIGN),
        1 => near.wrapping_sub(step * RECORD_ALIGN),
        2 => near.wrapping_add(step),
        3 => step * RECORD_ALIGN,
        4 => u64::MAX - step,
        _ => rng.next(),
    }
}

/// The helper process: this binary, running only `hostile_peer_helper`.
struct Helper {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Helper {
    fn spawn(scratch: &Scratch, role: &str, socket: &Path, mode: &str, seed: u64) -> Self {
        let name = format!("hostile {role} ({mode}, seed {seed})");
        let stdout = scratch.path(&format!("helper-{role}-{seed}.stdout"));
        let stderr = scratch.path(&format!("helper-{role}-{seed}.stderr"));
        let create =
            |path: &Path| File::create(path).unwrap_or_else(|err| panic!("creating {}: {err}", path.display()));
        let child = Command::new(std::env::current_exe().expect("the test binary knows its path"))
            .args([
                "hostile_peer_helper",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE_VAR, role)
            .env(SOCKET_VAR, socket)
            .env(MODE_VAR, mode)
            .env(SEED_VAR, seed.to_string())
            .env("G_DEBUG", "fatal-criticals")
            .stdin(Stdio::null())
            .stdout(create(&stdout))
            .stderr(create(&stderr))
            .spawn()
            .unwrap_or_else(|err| panic!("spawning the {name}: {err}"));
        Self {
            name,
            child,
            stdout,
            stderr,
        }
    }

    fn describe(&self) -> String {
        describe(
            &self.name,
            &fs::read_to_string(&self.stdout).unwrap_or_default(),
            &fs::read_to_string(&self.stderr).unwrap_or_default(),
        )
    }

    /// Waits for the helper to exit, and fails the test if it did not
    /// succeed. Past the watchdog it is killed.
    fn finish(mut self) -> String {
        let deadline = Instant::now() + WATCHDOG;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the helper") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the {} did not exit within {WATCHDOG:?} and was killed\n{}",
                    self.name,
                    self.describe()
                );
            }
            thread::sleep(POLL_INTERVAL);
        };
        assert!(
            status.success(),
            "the {} failed ({status})\n{}",
            self.name,
            self.describe()
        );
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|status| status.is_none()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `gst-launch-1.0` child's exit within the watchdog, or a failed test.
fn finish_within_watchdog(mut launch: Launch) -> common::Finished {
    let deadline = Instant::now() + WATCHDOG;
    while launch.exited().is_none() {
        if Instant::now() >= deadline {
            let output = launch.describe();
            launch.kill();
            panic!("the {} hung: still running after {WATCHDOG:?}\n{output}", launch.name);
        }
        thread::sleep(POLL_INTERVAL);
    }
    launch.finish()
}

// ---------------------------------------------------------------------------
// A hostile writer against a real shmringsrc.

const WRITER_SIZES: ChannelSizes = ChannelSizes {
    record_capacity: 64 << 10,
    release_slots: 256,
    heap_size: 1 << 20,
};
/// Valid buffers sent before the writer turns hostile, half inline and half
/// in heap blocks.
const VALID_BUFFERS: u64 = 20;
/// Rounds of misbehaviour; each wakes the reader.
const HOSTILE_ROUNDS: u32 = 300;

/// What a reader may name as the cause when the writer breaks the ring.
const READER_CAUSES: [&str; 3] = [
    "the shared ring is corrupt",
    "the writer sent an unreadable",
    "The shmringsink went away without sending EOS",
];

struct HostileWriter {
    records: Producer,
    releases: ReleaseConsumer,
    books: HeapBooks,
    heap: HeapMemory,
    /// The channel memfd, to store through as a broken writer would.
    channel: File,
    /// The reader's data-ready eventfd, to wake it after each store.
    data_ready: File,
    rng: Rng,
}

impl HostileWriter {
    /// Takes the reader's releases back; this writer keeps honest books.
    fn collect(&mut self) {
        let books = &mut self.books;
        let _ = self.releases.take_all(|offset| {
            let _ = books.release(offset, ring::reader(0));
        });
    }

    /// Sends a valid record if there is room. Returns whether it did.
    fn send(&mut self, header: &RecordHeader, payload: Payload, inline: &[u8]) -> bool {
        self.collect();
        match self.records.grant(payload) {
            Ok(Some(mut grant)) => {
                assert!(grant.write_inline(0, inline));
                grant.commit(header);
                true
            }
            _ => false,
        }
    }

    fn send_event(&mut self, event: &gst::Event) {
        let (header, payload) = codec::encode_event(event).expect("the event has an encoding");
        let sent = self.send(
            &header,
            Payload::Inline {
                len: payload.len() as u64,
            },
            &payload,
        );
        assert!(sent, "the record queue is empty at the start");
    }

    /// A buffer numbered `index`: inline for even numbers, in a block for
    /// odd ones.
    fn send_buffer(&mut self, index: u64) -> bool {
        self.send_buffer_flagged(index, 0)
    }

    fn send_buffer_flagged(&mut self, index: u64, flags: u32) -> bool {
        let mut header = RecordHeader::untimed(RecordKind::Buffer, flags);
        header.pts = index * 1_000_000;
        header.duration = 1_000_000;
        if index.is_multiple_of(2) {
            let bytes = vec![index as u8; 1000];
            return self.send(&header, Payload::Inline { len: 1000 }, &bytes);
        }
        let len = 8192;
        let Some(offset) = self.books.allocate(len, ring::reader(0)) else {
            return false;
        };
        // SAFETY: the block was just allocated, no reader has been told of
        // it, and no other slice into it exists.
        if let Some(block) = unsafe { self.heap.block_mut(offset, len) } {
            block.fill(index as u8);
        }
        let sent = self.send(&header, Payload::Block { offset, len }, &[]);
        if !sent {
            let _ = self.books.release(offset, ring::reader(0));
        }
        sent
    }

    fn send_flush(&mut self, payload: &[u8]) {
        let header = RecordHeader::untimed(RecordKind::Flush, 0);
        let len = payload.len() as u64;
        self.send(&header, Payload::Inline { len }, payload);
    }

    fn store(&self, at: u64, bytes: &[u8]) {
        self.channel
            .write_all_at(bytes, at)
            .expect("storing into the channel memfd");
    }

    fn store_record_bytes(&self, position: u64, bytes: &[u8]) {
        let capacity = WRITER_SIZES.record_capacity;
        for (index, byte) in bytes.iter().enumerate() {
            let at = (position + index as u64) % capacity;
            self.store(CONTROL_SIZE as u64 + at, &[*byte]);
        }
    }

    fn wake_reader(&mut self) {
        let _ = self.data_ready.write(&1u64.to_ne_bytes());
    }

    /// One round of breaking the ring, as `mode` says.
    fn misbehave(&mut self, mode: &str) {
        let write = self.records.position();
        let choice = match mode {
            "positions" => 0,
            "headers" => 1,
            "metas" => 5,
            "flushes" => 6,
            "open-flush" => 7,
            "silent-flush-word" => 8,
            _ => self.rng.below(7),
        };
        match choice {
            0 => {
                let field = [
                    OFFSET_RECORD_WRITE,
                    OFFSET_RECORD_WRITE,
                    OFFSET_RECORD_WRITE,
                    OFFSET_WRITER_RECORD_SLEEP,
                    OFFSET_RELEASE_READ,
                    OFFSET_WRITER_RELEASE_SLEEP,
                ][self.rng.below(6) as usize];
                let value = value_near(&mut self.rng, write);
                self.store(field as u64, &value.to_ne_bytes());
            }
            1 => {
                // A header at the write position, published by moving the
                // write position past it.
                let kind = match self.rng.below(8) {
                    0 => self.rng.next() as u32,
                    pick => (pick % 7) as u32,
                };
                let len = match self.rng.below(3) {
                    0 => value_near(&mut self.rng, 0),
                    _ => self.rng.below(512),
                };
                let block = match self.rng.below(3) {
                    0 => NONE,
                    _ => value_near(&mut self.rng, 0),
                };
                let mut header = [0u8; RECORD_HEADER_SIZE as usize];
                header[0..4].copy_from_slice(&kind.to_ne_bytes());
                header[4..8].copy_from_slice(&(self.rng.next() as u32).to_ne_bytes());
                header[8..16].copy_from_slice(&len.to_ne_bytes());
                for at in (16..56).step_by(8) {
                    header[at..at + 8].copy_from_slice(&self.rng.next().to_ne_bytes());
                }
                header[56..64].copy_from_slice(&block.to_ne_bytes());
                self.store_record_bytes(write, &header);
                let inline: Vec<u8> = (0..len.min(512)).map(|_| self.rng.next() as u8).collect();
                self.store_record_bytes(write + RECORD_HEADER_SIZE, &inline);
                let end = write.wrapping_add(record_size(len.min(1 << 20)).unwrap_or(0));
                self.store(OFFSET_RECORD_WRITE as u64, &end.to_ne_bytes());
            }
            2 => {
                let index = self.rng.below(1000);
                self.send_buffer(index);
            }
            3 => {
                // Payload bytes anywhere in the heap, blocks the reader
                // holds included.
                let offset = self.rng.below(WRITER_SIZES.heap_size);
                let len = self.rng.below(4096);
                // SAFETY: no other slice into the heap is alive in this process.
                // Writing into blocks a reader holds breaks the protocol,
                // not this process's memory: that reader only copies them.
                if let Some(bytes) = unsafe { self.heap.block_mut(offset, len) } {
                    let value = self.rng.next() as u8;
                    bytes.fill(value);
                }
            }
            5 => {
                // A metas record of entries of known kinds with bodies of
                // any bytes, then the buffer it says it belongs to.
                let mut metas = Vec::new();
                for _ in 0..=self.rng.below(3) {
                    let body: Vec<u8> = (0..self.rng.below(64)).map(|_| self.rng.next() as u8 % 8).collect();
                    metas.extend_from_slice(&(1 + self.rng.below(6) as u32).to_ne_bytes());
                    metas.extend_from_slice(&(body.len() as u32).to_ne_bytes());
                    metas.extend_from_slice(&body);
                }
                let header = RecordHeader::untimed(RecordKind::Metas, 0);
                if self.send(
                    &header,
                    Payload::Inline {
                        len: metas.len() as u64,
                    },
                    &metas,
                ) {
                    let index = self.rng.below(1000);
                    self.send_buffer_flagged(index, gstshmring::metas::METAS_PRECEDE);
                }
            }
            6 => match self.rng.below(4) {
                0 => {
                    // A flush by the rules: started, stopped, then its
                    // Flush record.
                    self.records.flush_signal().start();
                    let reset_time = self.rng.below(2) == 0;
                    let count = self.records.flush_signal().stop(reset_time);
                    self.send_flush(&ring::flush::encode_flush(count, reset_time));
                }
                1 => {
                    // Any flush word, stored without a wake.
                    let word = self.rng.next() as u32;
                    self.store(OFFSET_FLUSH as u64, &word.to_ne_bytes());
                }
                2 => {
                    // A Flush record of any count, or of any bytes.
                    let payload = match self.rng.below(2) {
                        0 => ring::flush::encode_flush(self.rng.next() as u32 >> 2, false).to_vec(),
                        _ => (0..self.rng.below(16)).map(|_| self.rng.next() as u8).collect(),
                    };
                    self.send_flush(&payload);
                }
                _ => {
                    // A flush started and never stopped.
                    self.records.flush_signal().start();
                }
            },
            7 => {
                // Flushes started and never stopped, up to the exit.
                self.records.flush_signal().start();
            }
            8 => {
                // A flush word stored without a wake, as each round ends
                // with a wake of the streaming thread only.
                let word = self.rng.next() as u32;
                self.store(OFFSET_FLUSH as u64, &word.to_ne_bytes());
            }
            _ => {
                // Anything anywhere in the control page.
                let at = self.rng.below(CONTROL_SIZE as u64 / 8) * 8;
                let value = self.rng.next();
                self.store(at, &value.to_ne_bytes());
            }
        }
        self.wake_reader();
    }
}

/// The hostile writer helper: serves one reader at `socket`.
fn hostile_writer(socket: &Path, mode: &str, seed: u64) {
    let listener = Listener::bind(socket, 0o600).expect("binding the hostile writer's socket");
    let connection = loop {
        if let Some(connection) = listener.accept().expect("accepting a reader") {
            break connection;
        }
        ipc::wait_readable([listener.as_fd()]).expect("waiting for a reader");
    };
    let heap = HeapMemory::create(WRITER_SIZES.heap_size).expect("creating the heap");
    let interrupt = Notifier::new().expect("an eventfd");
    let channel = ipc::serve_reader(&connection, WRITER_SIZES, &heap, interrupt.as_fd())
        .expect("the handshake")
        .expect("not interrupted");
    let fds = channel.fds(&heap).try_clone_to_owned().expect("duplicating fds");
    let (records, releases) = channel.into_parts();
    let mut writer = HostileWriter {
        records,
        releases,
        books: HeapBooks::new(heap.size()),
        heap,
        channel: File::from(fds.channel),
        data_ready: File::from(fds.data_ready),
        rng: Rng(seed),
    };

    // The valid part: the events a stream starts with, then buffers.
    writer.send_event(&gst::event::StreamStart::new("hostile-writer"));
    writer.send_event(&gst::event::Caps::new(
        &gst::Caps::builder("application/x-hostile").build(),
    ));
    writer.send_event(&gst::event::Segment::new(
        &gst::FormattedSegment::<gst::ClockTime>::new(),
    ));
    for index in 0..VALID_BUFFERS {
        assert!(writer.send_buffer(index), "the valid part fits in the ring");
    }
    // The reader publishes its position before it sleeps, so it reaches
    // ours once it has taken every record.
    let progress = writer.records.progress();
    let deadline = Instant::now() + WATCHDOG;
    while progress.read_position() != writer.records.position() {
        assert!(Instant::now() < deadline, "the reader did not read the valid part");
        thread::sleep(POLL_INTERVAL);
    }
    println!("{VALID_PART_DONE}");

    for _ in 0..HOSTILE_ROUNDS {
        writer.misbehave(mode);
        thread::sleep(Duration::from_millis(2));
    }
    // Exiting closes the socket: a reader still running learns that the
    // writer went away.
}

fn run_hostile_writer(mode: &str, seeds: &[u64]) -> Vec<String> {
    let mut causes = Vec::new();
    for &seed in seeds {
        let scratch = Scratch::new(&format!("hostile-writer-{mode}-{seed}"));
        let socket = scratch.socket();
        let helper = Helper::spawn(&scratch, "writer", &socket, mode, seed);
        let deadline = Instant::now() + WATCHDOG;
        while !common::is_socket(&socket) {
            assert!(
                Instant::now() < deadline,
                "the helper never listened\n{}",
                helper.describe()
            );
            thread::sleep(POLL_INTERVAL);
        }
        let reader = Launch::spawn(
            &scratch,
            "reader",
            &format!(
                "shmringsrc socket-path={} is-live=true ! fakesink sync=false",
                socket.display()
            ),
        );
        let helper_stdout = helper.finish();
        assert!(helper_stdout.contains(VALID_PART_DONE), "{helper_stdout}");
        let finished = finish_within_watchdog(reader);
        assert_eq!(
            finished.status.signal(),
            None,
            "the reader was killed by a signal\n{}",
            finished.describe()
        );
        finished.assert_failed();
        let cause = READER_CAUSES
            .iter()
            .find(|cause| finished.stderr.contains(**cause))
            .unwrap_or_else(|| panic!("the reader's error names no known cause\n{}", finished.describe()));
        assert!(
            finished.stderr.contains("ERROR: from element"),
            "{}",
            finished.describe()
        );
        let error = finished
            .stderr
            .lines()
            .find(|line| line.contains(cause))
            .unwrap_or_default();
        eprintln!("{mode} seed {seed}: {error}");
        causes.push((*cause).to_owned());
    }
    causes
}

#[test]
fn reader_survives_broken_positions() {
    let causes = run_hostile_writer("positions", &[1, 2, 3]);
    // Positions outside the queue are seen as such, not only as the
    // writer's exit.
    assert!(causes.iter().any(|cause| cause == READER_CAUSES[0]), "{causes:?}");
}

#[test]
fn reader_survives_broken_headers() {
    let causes = run_hostile_writer("headers", &[4, 5, 6]);
    assert!(causes.iter().any(|cause| cause != READER_CAUSES[2]), "{causes:?}");
}

#[test]
fn reader_refuses_hostile_metas_without_a_critical() {
    let causes = run_hostile_writer("metas", &[11, 12]);
    assert!(causes.iter().all(|cause| cause == READER_CAUSES[1]), "{causes:?}");
}

/// Flush words of any value, with or without a wake, flushes that never
/// stop, Flush records no flush announced or that do not decode: the
/// reader ends with an error (or, when the writer leaves in the middle of
/// a flush, reports that it went away), and never hangs in the flush.
#[test]
fn reader_survives_hostile_flushes() {
    run_hostile_writer("flushes", &[13, 14, 15]);
}

/// A writer that leaves in the middle of a flush, or whose flush word
/// changes without a wake of the watcher: the reader does not stay
/// flushing, but reads what is left and reports that the writer went away.
#[test]
fn reader_sees_a_writer_leave_in_the_middle_of_a_flush() {
    for mode in ["open-flush", "silent-flush-word"] {
        let causes = run_hostile_writer(mode, &[16, 17]);
        assert!(
            causes.iter().all(|cause| cause == READER_CAUSES[2]),
            "{mode}: {causes:?}"
        );
    }
}

#[test]
fn reader_survives_a_writer_scribbling_everywhere() {
    run_hostile_writer("everything", &[7, 8, 9, 10]);
}

// ---------------------------------------------------------------------------
// A hostile reader against a real shmringsink.

/// Raw video whose frames travel in heap blocks (over 4 KiB each), with a
/// heap of 16 frames, so that a reader holding blocks soon exhausts it.
/// Every frame is the same solid colour, so a reader that joins late can
/// still check each one against a reference.
const FRAME_SIZE: u64 = 128 * 128;
const PRODUCER: &str = "videotestsrc pattern=solid-color foreground-color=0xff8040c0 ! video/x-raw,format=GRAY8,width=128,height=128,framerate=30/1";
const HEAP_FRAMES: u64 = 16;
/// Frames the honest phase of the hostile reader takes.
const HONEST_FRAMES: u32 = 20;
/// Frames the well-behaved reader that comes next checks.
const CHECKED_FRAMES: u64 = 10;

struct HostileReader {
    connection: Connection,
    channel: ReaderChannel,
    /// The channel memfd, to store through anywhere.
    file: File,
    rng: Rng,
}

impl HostileReader {
    fn connect(socket: &Path, seed: u64) -> Self {
        let connection = Connection::connect(socket).expect("connecting to the writer");
        connection
            .send_client_hello(ipc::HelloPurpose::Reader)
            .expect("sending the hello");
        let (hello, fds) = loop {
            if let Some(reply) = connection.recv_server_hello().expect("the writer's hello") {
                break reply;
            }
            ipc::wait_readable([connection.as_fd()]).expect("waiting for the writer's hello");
        };
        assert_eq!(hello.status, HelloStatus::Accepted);
        let [channel, heap, data_ready, space_ready, release_ready]: [OwnedFd; 5] = fds.try_into().expect("five fds");
        let file = File::from(channel.try_clone().expect("duplicating the channel fd"));
        let fds = ReceivedFds {
            channel,
            heap,
            data_ready,
            space_ready,
            release_ready,
        };
        let channel = ReaderChannel::attach(fds, hello.sizes).expect("attaching to the ring");
        Self {
            connection,
            channel,
            file,
            rng: Rng(seed),
        }
    }

    fn store(&self, at: u64, value: u64) {
        self.file
            .write_all_at(&value.to_ne_bytes(), at)
            .expect("storing into the channel memfd");
    }

    /// The next record's block, if it names one; `None` when nothing came
    /// for a while. Records without a block are taken and skipped.
    fn next_block(&mut self) -> Option<u64> {
        let deadline = Instant::now() + WATCHDOG;
        while Instant::now() < deadline {
            match self.channel.records.peek() {
                Ok(Some(record)) => {
                    let payload = record.payload();
                    record.release();
                    if let Payload::Block { offset, .. } = payload {
                        return Some(offset);
                    }
                }
                Ok(None) => {
                    if self.channel.records.prepare_wait().expect("the writer keeps its ring") {
                        let data = self.channel.records.data_fd();
                        let _ = ipc::wait_readable_for(&[data, self.connection.as_fd()], 20u8.into());
                        self.channel.records.finish_wait();
                    }
                    if self.hung_up() {
                        return None;
                    }
                }
                Err(err) => panic!("the real writer broke its own ring: {err}"),
            }
        }
        None
    }

    fn hung_up(&self) -> bool {
        let ready = ipc::wait_readable_for(&[self.connection.as_fd()], 0u8.into()).expect("poll");
        ready[0] && self.connection.peer_gone()
    }

    /// Waits until the writer hangs up. With `keep_reading`, takes records
    /// meanwhile but releases no block; without, reads nothing, since taking
    /// a record publishes the read position.
    fn wait_to_be_dropped(&mut self, keep_reading: bool) {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if self.hung_up() {
                println!("{DROPPED}");
                return;
            }
            assert!(Instant::now() < deadline, "the writer never dropped this reader");
            if keep_reading {
                let _ = self.next_block();
            } else {
                let _ = ipc::wait_readable_for(&[self.connection.as_fd()], 20u8.into());
            }
        }
    }

    /// Stores at random over everything this reader can write, reading
    /// and releasing (rightly or not) in between.
    fn scribble(&mut self) {
        let release_queue = CONTROL_SIZE as u64 + self.channel.records.capacity();
        let slots = 64;
        let mut held = Vec::new();
        for _ in 0..300 {
            match self.rng.below(6) {
                0 => {
                    let field = [
                        OFFSET_RECORD_READ,
                        OFFSET_READER_SLEEP,
                        OFFSET_RELEASE_WRITE,
                        OFFSET_RELEASE_READ,
                        OFFSET_WRITER_RECORD_SLEEP,
                    ][self.rng.below(5) as usize];
                    let value = value_near(&mut self.rng, 0);
                    self.store(field as u64, value);
                }
                1 => {
                    let slot = self.rng.below(slots);
                    let value = value_near(&mut self.rng, held.last().copied().unwrap_or(0));
                    self.store(release_queue + 8 * slot, value);
                }
                2 => {
                    let value = value_near(&mut self.rng, held.last().copied().unwrap_or(0));
                    let _ = self.channel.releases.push(value);
                }
                3 => {
                    if let Some(offset) = held.pop() {
                        let _ = self.channel.releases.push(offset);
                    }
                }
                _ => {
                    // Takes one record if one is there, without waiting.
                    if let Ok(Some(record)) = self.channel.records.peek() {
                        if let Payload::Block { offset, .. } = record.payload() {
                            held.push(offset);
                        }
                        record.release();
                    }
                }
            }
            if self.hung_up() {
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The hostile reader helper: reads honestly for a while, then offends as
/// `mode` says.
fn hostile_reader(socket: &Path, mode: &str, seed: u64) {
    let mut reader = HostileReader::connect(socket, seed);
    let mut last = 0;
    for _ in 0..HONEST_FRAMES {
        last = reader.next_block().expect("the writer streams frames");
        reader.channel.releases.push(last).expect("the writer takes releases");
    }
    println!("{VALID_PART_DONE}");
    match mode {
        "releases" => {
            // A block it no longer holds, twice; an offset inside a block;
            // one past every heap.
            for offset in [last, last, last + 64, u64::MAX - 63] {
                let _ = reader.channel.releases.push(offset);
            }
            reader.wait_to_be_dropped(true);
        }
        "read-position" => {
            // Far ahead of anything the writer wrote.
            reader.store(OFFSET_RECORD_READ as u64, 1 << 40);
            reader.wait_to_be_dropped(false);
        }
        _ => reader.scribble(),
    }
}

/// Runs a writer, a hostile reader in `mode`, then a well-behaved reader
/// that must get correct frames. Returns the writer's stderr.
fn run_hostile_reader(mode: &str, seed: u64) -> String {
    let scratch = Scratch::new(&format!("hostile-reader-{mode}-{seed}"));
    let socket = scratch.socket();
    let socket = socket.display();
    let mut writer = start_writer(
        &scratch,
        &format!(
            "--gst-debug-no-color --gst-debug=shmringsink:2 {PRODUCER} ! shmringsink socket-path={socket} ring-size={}",
            HEAP_FRAMES * FRAME_SIZE
        ),
    );
    let helper = Helper::spawn(&scratch, "reader", scratch.socket().as_path(), mode, seed);
    let helper_stdout = helper.finish();
    assert!(helper_stdout.contains(VALID_PART_DONE), "{helper_stdout}");
    writer.assert_running();

    // The next reader, by the rules, gets whole, correct frames.
    let received = scratch.path("received.raw");
    let good = Launch::spawn(
        &scratch,
        "well-behaved reader",
        &format!(
            "shmringsrc socket-path={socket} num-buffers={CHECKED_FRAMES} ! filesink location={}",
            received.display()
        ),
    );
    finish_within_watchdog(good).assert_success();
    let reference_path = scratch.path("reference.raw");
    Launch::spawn(
        &scratch,
        "reference",
        &format!(
            "{} ! filesink location={}",
            PRODUCER.replacen("videotestsrc", "videotestsrc num-buffers=1", 1),
            reference_path.display()
        ),
    )
    .finish()
    .assert_success();
    let reference = fs::read(&reference_path).expect("the reference frame");
    assert_eq!(reference.len() as u64, FRAME_SIZE);
    let frames = fs::read(&received).expect("the received frames");
    assert_eq!(frames.len() as u64, CHECKED_FRAMES * FRAME_SIZE);
    for (index, frame) in frames.chunks(FRAME_SIZE as usize).enumerate() {
        assert!(
            frame == reference.as_slice(),
            "frame {index} differs from the reference"
        );
    }

    writer.assert_running();
    let stderr = writer.stderr_text();
    writer.kill();
    assert!(!stderr.contains("CRITICAL"), "the writer logged a CRITICAL\n{stderr}");
    for line in stderr.lines().filter(|line| line.contains("dropping")) {
        eprintln!("{mode} seed {seed}: {line}");
    }
    stderr
}

#[test]
fn writer_drops_a_reader_releasing_blocks_it_does_not_hold() {
    let stderr = run_hostile_reader("releases", 1);
    assert!(
        stderr.contains("dropping reader 0: it released heap"),
        "the writer did not name the bad release\n{stderr}"
    );
}

#[test]
fn writer_drops_a_reader_whose_read_position_leaves_the_queue() {
    let stderr = run_hostile_reader("read-position", 2);
    assert!(
        stderr
            .contains("dropping the reader: the shared ring is corrupt: the reader's position moved outside the queue"),
        "the writer did not name the bad read position\n{stderr}"
    );
}

#[test]
fn writer_survives_a_reader_scribbling_everywhere() {
    for seed in [3, 4, 5] {
        let stderr = run_hostile_reader("scribble", seed);
        // Whatever the scribbles did, the writer noticed the offence.
        assert!(stderr.contains("dropping"), "the writer noticed nothing\n{stderr}");
    }
}

/// Not a test: the helper process the tests above start. It runs only with
/// `HOSTILE_PEER` set, and fails otherwise.
#[test]
#[ignore = "the helper process of this file's tests, started by them"]
fn hostile_peer_helper() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run by the tests only"));
    let role = var(ROLE_VAR);
    let socket = PathBuf::from(var(SOCKET_VAR));
    let mode = var(MODE_VAR);
    let seed: u64 = var(SEED_VAR).parse().expect("a numeric seed");
    gst::init().expect("GStreamer initializes");
    match role.as_str() {
        "writer" => hostile_writer(&socket, &mode, seed),
        "reader" => hostile_reader(&socket, &mode, seed),
        other => panic!("unknown role {other}"),
    }
}
