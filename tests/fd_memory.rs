//! Fd-backed memory crosses by its fd, between two processes.
//!
//! A writer process (this binary run again with `FD_WRITER_KIND` set, see
//! `fd_writer_helper`) pushes 60 frames whose memory is one of four memfds,
//! wrapped by GstFdAllocator or GstDmaBufAllocator (this machine has no
//! udmabuf, so the DMABuf memory is memfd-backed too), recycling them as a
//! camera's pool does: a memfd is written again only once the sink has let
//! go of its buffer, that is once the reader gave it back. The reader, in
//! this process, checks that every frame arrives as fd (or DMABuf) memory
//! with its bytes intact, under caps that announce DMABuf memory exactly
//! when it is, and both sides count no byte copied. DMABuf frames of two
//! memories each, which no single fd carries, are copied, and then arrive
//! under caps without the DMABuf feature.
//!
//! A hostile writer, this process speaking the protocol with the crate's
//! own modules, announces a pipe, or names more of a memfd than it holds: a
//! real `gst-launch-1.0 shmringsrc` must fail with an error that says so.

mod common;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_allocators::prelude::*;

use gstshmring::codec::{self, FdBufferRef};
use gstshmring::ipc::messages::{FdAnnouncement, FdMemoryKind};
use gstshmring::ipc::{self, Listener};
use gstshmring::ring::{ChannelSizes, HeapMemory, Notifier, Payload, RecordHeader, RecordKind};

use common::{Launch, POLL_INTERVAL, Scratch};

const KIND_VAR: &str = "FD_WRITER_KIND";
const SOCKET_VAR: &str = "FD_WRITER_SOCKET";
const WIDTH: usize = 320;
const HEIGHT: usize = 240;
const FRAME: usize = WIDTH * HEIGHT;
const FRAMES: u64 = 60;
/// Frames of the test that sends each in a new memfd: more than the fds a
/// reader keeps (`MAX_ANNOUNCED_FDS`, 64).
const FRESH_FRAMES: u64 = 100;
/// The writer's pool: memfds recycled as a camera's buffers are.
const POOL: usize = 4;
/// How long a process of these tests may take for its part: far above what
/// each needs, it only turns a hang into a failure.
const WATCHDOG: Duration = Duration::from_secs(60);

/// The bytes of frame `index`: different in every frame and every byte.
fn frame_bytes(index: u64) -> Vec<u8> {
    (0..FRAME)
        .map(|at| ((index as usize * 31 + at * 7) % 251) as u8)
        .collect()
}

fn caps(dmabuf: bool) -> String {
    let feature = if dmabuf { "(memory:DMABuf)" } else { "" };
    format!("video/x-raw{feature},format=GRAY8,width={WIDTH},height={HEIGHT},framerate=30/1")
}

fn memfd(len: u64) -> File {
    let memfd = memfd::MemfdOptions::default()
        .allow_sealing(true)
        .create("fd-memory-test")
        .expect("creating a memfd");
    memfd.as_file().set_len(len).expect("sizing a memfd");
    memfd.into_file()
}

/// The writer process: pushes `FRAMES` frames of fd (or DMABuf) memory
/// into a shmringsink, then prints the sink's stats.
#[test]
#[ignore = "the helper process of this file's tests, started by them"]
fn fd_writer_helper() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run by the tests only"));
    let kind = var(KIND_VAR);
    let dmabuf = kind != "fd";
    // Two memories to a buffer cannot cross by one fd: the writer copies.
    let split = kind == "dmabuf-split";
    let socket = PathBuf::from(var(SOCKET_VAR));
    let pipeline = common::parse_pipeline(&format!(
        "appsrc name=src format=time caps=\"{}\" ! shmringsink name=sink socket-path={} wait-for-readers=1 when-full=block",
        caps(dmabuf),
        socket.display()
    ));
    let appsrc = pipeline
        .by_name("src")
        .and_downcast::<gst_app::AppSrc>()
        .expect("an appsrc");
    let memfds: Vec<File> = (0..POOL).map(|_| memfd(FRAME as u64)).collect();
    let fd_allocator = gst_allocators::FdAllocator::new();
    let dmabuf_allocator = gst_allocators::DmaBufAllocator::new();
    let mut pool: Vec<gst::Buffer> = memfds
        .iter()
        .map(|memfd| {
            let fd = memfd.as_raw_fd();
            let flags = gst_allocators::FdMemoryFlags::DONT_CLOSE;
            // SAFETY: the memfd outlives every memory over it (DONT_CLOSE:
            // the memory never closes it), and holds FRAME bytes.
            let memory = unsafe {
                if dmabuf {
                    dmabuf_allocator.alloc_dmabuf_with_flags(fd, FRAME, flags)
                } else {
                    fd_allocator.alloc_fd(fd, FRAME, flags)
                }
            }
            .expect("wrapping a memfd");
            let mut buffer = gst::Buffer::new();
            let buffer_mut = buffer.get_mut().unwrap();
            if split {
                buffer_mut.append_memory(memory.share(..FRAME / 2));
                buffer_mut.append_memory(memory.share(FRAME / 2..));
            } else {
                buffer_mut.append_memory(memory);
            }
            buffer
        })
        .collect();
    pipeline.set_state(gst::State::Playing).expect("the writer plays");
    if kind == "fd-fresh" {
        push_fresh_memfds(&appsrc, &fd_allocator);
    } else {
        push_from_pool(&appsrc, &memfds, &mut pool);
    }
    appsrc.end_of_stream().expect("ending the stream");
    let bus = pipeline.bus().expect("a bus");
    let message = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS within a minute");
    assert_eq!(message.type_(), gst::MessageType::Eos, "{message:?}");
    let sink = pipeline.by_name("sink").expect("the sink");
    let stats = sink.property::<gst::Structure>("stats");
    println!(
        "writer buffers={} bytes-copied={}",
        stats.get::<u64>("buffers").unwrap(),
        stats.get::<u64>("bytes-copied").unwrap()
    );
    pipeline.set_state(gst::State::Null).expect("the writer stops");
}

/// Pushes `FRAMES` frames from `pool`, writing a memfd again only once the
/// sink has given its buffer back, as a camera's pool does.
fn push_from_pool(appsrc: &gst_app::AppSrc, memfds: &[File], pool: &mut [gst::Buffer]) {
    for index in 0..FRAMES {
        let slot = index as usize % POOL;
        // A pool hands a buffer out again only once nobody else holds it or
        // its memory: a buffer made writable on the way (basesrc marks the
        // first one DISCONT) is a copy that shares the memory.
        common::wait_until_within(WATCHDOG, "the sink to give a pool buffer back", || {
            pool[slot].is_writable() && pool[slot].is_all_memory_writable()
        });
        memfds[slot]
            .write_all_at(&frame_bytes(index), 0)
            .expect("filling a frame");
        let buffer = pool[slot].get_mut().expect("a buffer nobody else holds");
        buffer.set_pts(gst::ClockTime::from_mseconds(index * 33));
        buffer.set_duration(gst::ClockTime::from_mseconds(33));
        appsrc.push_buffer(pool[slot].clone()).expect("pushing a frame");
    }
}

/// Pushes `FRESH_FRAMES` frames, each in a memfd of its own that its memory
/// owns, and lets go of each once the sink has: more fds than a reader
/// keeps, so they cross by their fd only if the freed ones are forgotten.
/// At most `POOL` are out at once (a sink keeps its last buffer), so that a
/// frame's fd is forgotten long before a hundred are sent.
fn push_fresh_memfds(appsrc: &gst_app::AppSrc, allocator: &gst_allocators::FdAllocator) {
    let mut out = std::collections::VecDeque::new();
    for index in 0..FRESH_FRAMES {
        if out.len() == POOL {
            let oldest: gst::Buffer = out.pop_front().unwrap();
            common::wait_until_within(WATCHDOG, "the sink to let go of a frame", || {
                oldest.is_writable() && oldest.is_all_memory_writable()
            });
        }
        let memfd = memfd(FRAME as u64);
        memfd.write_all_at(&frame_bytes(index), 0).expect("filling a frame");
        // SAFETY: the memory takes the memfd, which holds FRAME bytes, and
        // closes it when it is freed.
        let memory = unsafe {
            allocator.alloc_fd(
                std::os::fd::IntoRawFd::into_raw_fd(memfd),
                FRAME,
                gst_allocators::FdMemoryFlags::NONE,
            )
        }
        .expect("wrapping a memfd");
        let mut buffer = gst::Buffer::new();
        {
            let buffer = buffer.get_mut().unwrap();
            buffer.append_memory(memory);
            buffer.set_pts(gst::ClockTime::from_mseconds(index * 33));
            buffer.set_duration(gst::ClockTime::from_mseconds(33));
        }
        appsrc.push_buffer(buffer.clone()).expect("pushing a frame");
        out.push_back(buffer);
    }
}

/// Reads `FRAMES` frames from a writer process of `kind` and checks each:
/// they crossed by their fd unless the kind is `dmabuf-split`, and then
/// they are copies, under caps without the DMABuf feature.
fn frames_cross(kind: &str) {
    let by_fd = kind != "dmabuf-split";
    let dmabuf = kind == "dmabuf";
    let frames = if kind == "fd-fresh" { FRESH_FRAMES } else { FRAMES };
    let scratch = Scratch::new(&format!("fd-memory-{kind}"));
    let socket = scratch.socket();
    let stdout_path = scratch.path("writer.stdout");
    let stderr_path = scratch.path("writer.stderr");
    let mut writer = Command::new(std::env::current_exe().expect("the test binary knows its path"))
        .args([
            "fd_writer_helper",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KIND_VAR, kind)
        .env(SOCKET_VAR, &socket)
        .env("G_DEBUG", "fatal-criticals")
        // For the lines that count the fds announced.
        .env("GST_DEBUG", "shmringsink:5")
        .env("GST_DEBUG_NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawning the writer");
    let pipeline = common::parse_pipeline(&format!(
        "shmringsrc name=src socket-path={} ! appsink name=sink sync=false",
        socket.display()
    ));
    let appsink = pipeline
        .by_name("sink")
        .and_downcast::<gst_app::AppSink>()
        .expect("an appsink");
    pipeline.set_state(gst::State::Playing).expect("the reader plays");
    for index in 0..frames {
        let sample = appsink
            .try_pull_sample(gst::ClockTime::from_seconds(WATCHDOG.as_secs()))
            .unwrap_or_else(|| panic!("frame {index} did not arrive"));
        let buffer = sample.buffer().expect("a buffer");
        assert_eq!(buffer.n_memory(), 1, "frame {index}");
        let memory = buffer.peek_memory(0);
        assert_eq!(
            memory.is_memory_type::<gst_allocators::FdMemory>(),
            by_fd,
            "frame {index}: {memory:?}"
        );
        assert_eq!(
            memory.is_memory_type::<gst_allocators::DmaBufMemory>(),
            dmabuf,
            "frame {index}: {memory:?}"
        );
        let caps = sample.caps().expect("caps").to_owned();
        let announces_dmabuf = caps
            .features(0)
            .is_some_and(|features| features.contains(gst_allocators::CAPS_FEATURE_MEMORY_DMABUF));
        assert_eq!(announces_dmabuf, dmabuf, "frame {index} under {caps}");
        let map = buffer.map_readable().expect("mapping a frame");
        assert!(
            map.as_slice() == frame_bytes(index),
            "frame {index} is not intact: it holds frame {:?}",
            (0..frames).find(|&other| map.as_slice() == frame_bytes(other))
        );
        assert_eq!(buffer.pts(), Some(gst::ClockTime::from_mseconds(index * 33)));
    }
    assert!(
        appsink
            .try_pull_sample(gst::ClockTime::from_seconds(WATCHDOG.as_secs()))
            .is_none()
            && appsink.is_eos(),
        "the stream did not end after {frames} frames"
    );
    let src = pipeline.by_name("src").expect("the source");
    let stats = src.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("buffers").unwrap(), frames, "{stats}");
    // The reader copies nothing either way: a copy the writer made is a
    // heap block, which it leases.
    assert_eq!(stats.get::<u64>("bytes-copied").unwrap(), 0, "{stats}");
    let copied = if by_fd { 0 } else { frames * FRAME as u64 };
    pipeline.set_state(gst::State::Null).expect("the reader stops");
    let deadline = Instant::now() + WATCHDOG;
    let status = loop {
        if let Some(status) = writer.try_wait().expect("waiting for the writer") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = writer.kill();
            panic!("the writer did not exit");
        }
        thread::sleep(POLL_INTERVAL);
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let output = common::describe("writer", &stdout, &stderr);
    assert!(status.success(), "{output}");
    assert!(!stderr.contains("CRITICAL"), "{output}");
    assert!(
        stdout.contains(&format!("writer buffers={frames} bytes-copied={copied}")),
        "{output}"
    );
    // A warm pool costs no message: one announcement per buffer of it.
    let announced = stderr.lines().filter(|line| line.contains("announced fd ")).count();
    let expected = match kind {
        "fd-fresh" => FRESH_FRAMES as usize,
        "dmabuf-split" => 0,
        _ => POOL,
    };
    assert_eq!(announced, expected, "fds announced\n{output}");
}

#[test]
fn fd_memory_crosses_by_its_fd() {
    frames_cross("fd");
}

#[test]
fn dmabuf_memory_crosses_by_its_fd() {
    frames_cross("dmabuf");
}

#[test]
fn fds_of_freed_memories_are_forgotten() {
    frames_cross("fd-fresh");
}

#[test]
fn dmabuf_caps_lose_their_feature_when_the_writer_has_to_copy() {
    frames_cross("dmabuf-split");
}

// ---------------------------------------------------------------------------
// A hostile writer against a real shmringsrc.

const SIZES: ChannelSizes = ChannelSizes {
    record_capacity: 64 << 10,
    release_slots: 256,
    heap_size: 1 << 20,
};

/// Serves one `gst-launch-1.0 shmringsrc`, announces `fd` as fd 0 of
/// memory `kind` and sends a frame naming `size` bytes of it. Returns the reader's stderr
/// once it has failed.
fn reader_error_for(name: &str, fd: std::os::fd::BorrowedFd<'_>, kind: FdMemoryKind, size: u64) -> String {
    let scratch = Scratch::new(&format!("fd-memory-hostile-{name}"));
    let socket = scratch.socket();
    common::init_gst();
    let listener = Listener::bind(&socket, 0o600).expect("binding the socket");
    let reader = Launch::spawn(
        &scratch,
        "reader",
        // Live, so that an error before the first buffer ends gst-launch
        // rather than leaving fakesink waiting to preroll on the EOS after
        // it.
        &format!("shmringsrc socket-path={} is-live=true ! fakesink", socket.display()),
    );
    let connection = loop {
        if let Some(connection) = listener.accept().expect("accepting the reader") {
            break connection;
        }
        ipc::wait_readable([listener.as_fd()]).expect("waiting for the reader");
    };
    let heap = HeapMemory::create(SIZES.heap_size).expect("creating the heap");
    let interrupt = Notifier::new().expect("an eventfd");
    let channel = ipc::serve_reader(&connection, SIZES, &heap, interrupt.as_fd())
        .expect("the handshake")
        .expect("not interrupted");
    let (mut records, _releases) = channel.into_parts();
    let mut send = |header: &RecordHeader, inline: &[u8]| {
        let payload = Payload::Inline {
            len: inline.len() as u64,
        };
        let mut grant = records.grant(payload).unwrap().expect("room in the queue");
        assert!(grant.write_inline(0, inline));
        grant.commit(header);
    };
    for event in [
        gst::event::StreamStart::new("hostile-fd-writer"),
        gst::event::Caps::new(&caps(false).parse::<gst::Caps>().unwrap()),
        gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new()),
    ] {
        let (header, payload) = codec::encode_event(&event).expect("an encoding");
        send(&header, &payload);
    }
    let announcement = FdAnnouncement { id: 0, kind };
    assert!(
        connection
            .send_message_with_fds(&announcement.encode(), &[fd])
            .expect("announcing the fd")
    );
    let mut header = RecordHeader::untimed(RecordKind::FdBuffer, 0);
    header.pts = 0;
    let frame = FdBufferRef {
        fd_id: 0,
        offset: 0,
        size,
        hold: 0,
    };
    send(&header, &frame.encode());
    // The connection stays open until the reader has failed, so that its
    // error is the fd's, not the writer's exit.
    let mut reader = reader;
    let deadline = Instant::now() + WATCHDOG;
    while reader.exited().is_none() {
        if Instant::now() >= deadline {
            let output = reader.describe();
            reader.kill();
            panic!("the reader hung\n{output}");
        }
        thread::sleep(POLL_INTERVAL);
    }
    let finished = reader.finish();
    finished.assert_failed();
    drop(connection);
    finished.stderr
}

#[test]
fn a_writer_announcing_a_pipe_gets_a_clear_reader_error() {
    let (read, _write) = nix::unistd::pipe().expect("a pipe");
    let stderr = reader_error_for("pipe", read.as_fd(), FdMemoryKind::Fd, 4096);
    assert!(
        stderr.contains("the writer announced a pipe as buffer memory"),
        "{stderr}"
    );
}

#[test]
fn a_writer_naming_more_than_its_memfd_holds_gets_a_clear_reader_error() {
    let memfd = memfd::MemfdOptions::default()
        .allow_sealing(true)
        .create("short")
        .expect("a memfd");
    memfd.as_file().set_len(4096).unwrap();
    memfd
        .add_seals(&[memfd::FileSeal::SealShrink])
        .expect("sealing the memfd");
    let stderr = reader_error_for("short", memfd.as_file().as_fd(), FdMemoryKind::Fd, 8192);
    assert!(
        stderr.contains("the writer named bytes 0..+8192 of fd 0, which holds 4096 bytes"),
        "{stderr}"
    );
}

#[test]
fn an_empty_memfd_announced_as_dmabuf_gets_a_clear_reader_error() {
    // Only a real dma-buf may have a size fstat does not tell: an empty
    // memfd called DMABuf would fault (SIGBUS) at the first read.
    let memfd = memfd::MemfdOptions::default()
        .allow_sealing(true)
        .create("empty")
        .expect("a memfd");
    memfd
        .add_seals(&[memfd::FileSeal::SealShrink])
        .expect("sealing the memfd");
    let stderr = reader_error_for("empty", memfd.as_file().as_fd(), FdMemoryKind::DmaBuf, 4096);
    assert!(
        stderr.contains("the writer named bytes 0..+4096 of fd 0, which holds 0 bytes"),
        "{stderr}"
    );
}
