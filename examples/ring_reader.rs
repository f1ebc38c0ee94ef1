//! Reads a running `shmringsink` from an application's own poll loop, with
//! the crate's `ring` and `ipc` modules and no GStreamer API, printing one
//! line per record (kind, payload size, pts, the heap offset of its block if
//! it has one, and for caps the caps) and a summary when the writer has gone.
//!
//! ```text
//! gst-launch-1.0 videotestsrc num-buffers=30 ! shmringsink socket-path=/tmp/cam.sock &
//! cargo run --example ring_reader -- /tmp/cam.sock
//! ```
//!
//! The loop is the one `shmringsrc` runs: take every record there is, watch
//! the queue for a moment, then announce the sleep (`prepare_wait`), sleep
//! in the poll, and end the sleep (`finish_edge_wait`). mio watches fds
//! edge-triggered, which is why the data eventfd is never read.
//!
//! The ring and ipc modules do not use GStreamer, but the crate as a whole
//! (its elements, and `codec`) links it today, so this binary does too.

use std::error::Error;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gstshmring::ipc;
use gstshmring::ring::layout::NONE;
use gstshmring::ring::{Payload, ReaderChannel, RecordKind};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

/// The ring's data eventfd: written when a record arrives while we sleep.
const DATA: Token = Token(0);
/// The control socket: readable when the writer hangs up.
const CONTROL: Token = Token(1);
/// Rounds the queue is watched before sleeping, as `shmringsrc` does.
const SPINS_BEFORE_SLEEP: u32 = 256;

#[derive(Default)]
struct Totals {
    records: u64,
    buffers: u64,
    bytes: u64,
}

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: ring_reader SOCKET_PATH (the socket-path of a running shmringsink)");
        return ExitCode::from(2);
    };
    match read_until_writer_leaves(&path) {
        Ok(totals) => {
            println!(
                "summary: records={} buffers={} bytes={}",
                totals.records, totals.buffers, totals.bytes
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ring_reader: {err}");
            ExitCode::FAILURE
        }
    }
}

fn read_until_writer_leaves(path: &Path) -> Result<Totals, Box<dyn Error>> {
    // `connect_reader` waits for a writer to appear at `path`, and gives up
    // when `interrupt` becomes readable. An application would write to
    // `_cancel` from another thread to stop waiting; nothing does here.
    let (interrupt, _cancel) = io::pipe()?;
    let Some((connection, mut reader)) = ipc::connect_reader(path, &[interrupt.as_fd()])? else {
        return Err("interrupted while connecting".into());
    };

    let mut poll = Poll::new()?;
    let data_fd = reader.records.data_fd().as_raw_fd();
    let control_fd = connection.as_fd().as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&data_fd), DATA, Interest::READABLE)?;
    poll.registry()
        .register(&mut SourceFd(&control_fd), CONTROL, Interest::READABLE)?;
    let mut events = Events::with_capacity(4);

    let mut totals = Totals::default();
    let mut writer_gone = false;
    loop {
        while print_next_record(&mut reader, &mut totals)? {}
        // Records the writer committed before it exited are in the queue
        // even after the hang-up: the loop above has just drained them.
        if writer_gone {
            return Ok(totals);
        }
        if reader.records.spin_for_data(SPINS_BEFORE_SLEEP)? {
            continue;
        }
        if !reader.records.prepare_wait()? {
            // A record arrived after all: do not sleep.
            continue;
        }
        let polled = poll.poll(&mut events, None);
        reader.records.finish_edge_wait();
        match polled {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err.into()),
        }
        if events.iter().any(|event| event.token() == CONTROL) && connection.peer_gone() {
            writer_gone = true;
        }
    }
}

/// Prints the oldest record, gives its block back and frees its place in
/// the queue. Returns `false` when the queue is empty.
fn print_next_record(reader: &mut ReaderChannel, totals: &mut Totals) -> Result<bool, Box<dyn Error>> {
    let Some(record) = reader.records.peek()? else {
        return Ok(false);
    };
    // `peek` checked the header and that the payload lies inside the queue
    // or the heap; the bytes are copied out, since the writer maps them too
    // and can change them under us.
    let header = *record.header();
    let payload = record.payload();
    let bytes = match payload {
        Payload::Inline { .. } => record.inline_to_vec(),
        Payload::Block { offset, len } => reader.heap.block_to_vec(offset, len).unwrap_or_default(),
    };
    let pts = match header.pts {
        NONE => "none".to_owned(),
        nanoseconds => nanoseconds.to_string(),
    };
    let mut line = format!("{:?} size={} pts={pts}", header.kind, bytes.len());
    if let Payload::Block { offset, .. } = payload {
        line += &format!(" block={offset}");
    }
    match header.kind {
        RecordKind::Buffer => {
            // A real reader would use the frame here, before giving it back.
            totals.buffers += 1;
            totals.bytes += bytes.len() as u64;
        }
        // The caps as a UTF-8 string (`gst_caps_to_string`), shown but not
        // trusted: invalid UTF-8 and control characters are replaced.
        RecordKind::Caps => {
            let caps = String::from_utf8_lossy(&bytes);
            line += " caps=";
            line.extend(caps.chars().map(|c| if c.is_control() { '?' } else { c }));
        }
        // The writer (when-full=drop) dropped buffers for this reader: the
        // payload counts them.
        RecordKind::Lost => {
            if let Some(lost) = bytes.first_chunk::<8>() {
                line += &format!(" lost={}", u64::from_ne_bytes(*lost));
            }
        }
        // The writer flushed (a seek): the records before this one were of
        // the old stream, which a player would have skipped as soon as the
        // flush word (`Consumer::flush_word`) changed.
        RecordKind::Flush => {
            if let Some(count) = gstshmring::ring::flush::decode_flush(&bytes) {
                line += &format!(" flush={count}");
            }
        }
        // A buffer left in an fd the writer announced on the socket, which
        // this example does not read: its hold goes straight back, so that
        // the writer's upstream gets its buffer again.
        RecordKind::FdBuffer => {
            if let Ok(fd_ref) = gstshmring::codec::FdBufferRef::decode(&bytes) {
                line += &format!(" fd={} offset={} size={}", fd_ref.fd_id, fd_ref.offset, fd_ref.size);
                reader
                    .releases
                    .push(gstshmring::ring::layout::FD_RELEASE_TAG | fd_ref.hold)?;
            }
        }
        RecordKind::Event | RecordKind::VideoLayout | RecordKind::Metas | RecordKind::FdForget => {}
    }
    totals.records += 1;
    println!("{line}");
    // The block goes back before the record is freed, so the writer never
    // sees a block that is neither named by a record nor given back.
    if let Payload::Block { offset, .. } = payload {
        reader.releases.push(offset)?;
    }
    record.release();
    Ok(true)
}
