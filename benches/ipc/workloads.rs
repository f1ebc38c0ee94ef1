//! What flows through each transport: the workloads of the comparison.
//!
//! W1 to W4 are the comparison proper. Two more look at shmring's heap of
//! blocks: W1-64f is W1 with a heap of 64 frames instead of the default, and
//! W5 is W1 read by a consumer that keeps the last 8 frames. Both run inside
//! W1's rounds, so that each of their runs has a W1 run of the same
//! transport next to it to be divided by.

use std::time::Duration;

/// The stream a producer makes.
#[derive(Debug, Clone, Copy)]
pub enum Media {
    /// Raw I420 video from `videotestsrc pattern=black`.
    Video { width: u32, height: u32 },
    /// S16LE stereo at 48 kHz from `audiotestsrc wave=silence`.
    Audio { samples: u32 },
}

const AUDIO_RATE: u32 = 48_000;
const AUDIO_CHANNELS: u32 = 2;
/// The nominal frame rate in the video caps; with `sync=false` it only
/// labels the frames.
const VIDEO_FPS: u32 = 30;
/// shmsink's area for video: about this many frames, so that it fits in the
/// last-level cache at 1080p.
const PEER_VIDEO_FRAMES: u64 = 8;
const PEER_AUDIO_AREA: u64 = 64 * 1024;
/// shmringsink's `ring-size` is rounded up to whole pages.
const PAGE: u64 = 4096;
/// W1-64f's heap, in frames.
const BIG_HEAP_FRAMES: u64 = 64;
/// How many of the latest buffers W5's consumer keeps.
const KEPT_FRAMES: usize = 8;

impl Media {
    /// Bytes in one buffer.
    pub fn buffer_size(self) -> u64 {
        match self {
            Media::Video { width, height } => u64::from(width) * u64::from(height) * 3 / 2,
            Media::Audio { samples } => u64::from(samples) * u64::from(AUDIO_CHANNELS) * 2,
        }
    }

    pub fn caps(self) -> String {
        match self {
            Media::Video { width, height } => {
                format!("video/x-raw,format=I420,width={width},height={height},framerate={VIDEO_FPS}/1")
            }
            Media::Audio { .. } => {
                format!("audio/x-raw,format=S16LE,rate={AUDIO_RATE},channels={AUDIO_CHANNELS},layout=interleaved")
            }
        }
    }

    /// The producer and its caps, ready for a transport sink to follow. A
    /// live producer paces itself against the clock, so the sink that
    /// follows never waits and the writer's stamp is taken as it renders.
    pub fn producer(self, buffers: u64, live: bool) -> String {
        let source = match self {
            Media::Video { .. } => format!("videotestsrc pattern=black num-buffers={buffers}"),
            Media::Audio { samples } => {
                format!("audiotestsrc wave=silence samplesperbuffer={samples} num-buffers={buffers}")
            }
        };
        let live = if live { " is-live=true" } else { "" };
        format!("{source}{live} ! {}", self.caps())
    }

    /// The element that turns a byte stream back into buffers of this media.
    pub fn raw_parser(self) -> String {
        match self {
            Media::Video { width, height } => {
                format!(
                    "rawvideoparse use-sink-caps=false format=i420 width={width} height={height} framerate={VIDEO_FPS}/1"
                )
            }
            Media::Audio { .. } => format!(
                "rawaudioparse use-sink-caps=false format=pcm pcm-format=s16le sample-rate={AUDIO_RATE} num-channels={AUDIO_CHANNELS}"
            ),
        }
    }

    /// The shm-size we give shmsink: about eight frames of video, or 64 KiB
    /// for audio, the sizes at which it completes.
    pub fn peer_shm_size(self) -> u64 {
        match self {
            Media::Video { .. } => self.buffer_size() * PEER_VIDEO_FRAMES,
            Media::Audio { .. } => PEER_AUDIO_AREA,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Buffers per second at the reader.
    Throughput,
    /// One-way latency of every buffer, from the writer's stamp to the reader.
    Latency,
}

#[derive(Debug, Clone)]
pub struct Workload {
    /// Short name used in file names and on the command line.
    pub id: &'static str,
    pub title: &'static str,
    pub media: Media,
    pub buffers: u64,
    /// Whether the producer is paced by the clock (`is-live=true`).
    pub live: bool,
    pub measure: Measure,
    /// A run still going after this long is killed and counted as hung.
    pub timeout: Duration,
    /// A guess at one run's length, for the first ETA; later ETAs use what
    /// the runs really took.
    pub typical: Duration,
    /// Whether shmsink's default configuration (its 64 MiB area) is also run
    /// once, to report what it does.
    pub peer_default: bool,
    /// shmringsink's `ring-size` (the heap, in bytes); None leaves the
    /// default, which sizes it from the caps.
    pub ring_size: Option<u64>,
    /// Buffers the reader's sink keeps (the latest ones, each dropped once
    /// this many newer ones have arrived); 0 keeps none.
    pub keep: usize,
    /// Whether only the shmring transports run it (a shmringsink setting).
    pub shmring_only: bool,
    /// The workload whose rounds this one runs in, right after it, so that
    /// a ratio between the two pairs runs made a few seconds apart.
    pub paired_with: Option<&'static str>,
}

impl Workload {
    /// The shm-size we give shmsink: [`Media::peer_shm_size`], plus room for
    /// the buffers the reader keeps, which it cannot reuse while they are
    /// kept.
    pub fn peer_shm_size(&self) -> u64 {
        self.media.peer_shm_size() + self.keep as u64 * self.media.buffer_size()
    }
}

/// The workloads of a full run, or tiny ones for the smoke mode.
pub fn all(smoke: bool) -> Vec<Workload> {
    let sized = |full: u64, tiny: u64| if smoke { tiny } else { full };
    let timeout = |full: u64| Duration::from_secs(if smoke { 20 } else { full });
    let typical = |full: f64| Duration::from_secs_f64(if smoke { 0.5 } else { full });
    let latency_audio = Media::Audio {
        samples: AUDIO_RATE / 1000,
    };
    let hd = Media::Video {
        width: 1920,
        height: 1080,
    };
    let throughput = |id, title, media, buffers, timeout, typical| Workload {
        id,
        title,
        media,
        buffers,
        live: false,
        measure: Measure::Throughput,
        timeout,
        typical,
        peer_default: true,
        ring_size: None,
        keep: 0,
        shmring_only: false,
        paired_with: None,
    };
    let latency = |id, title, live, timeout, typical| Workload {
        id,
        title,
        media: latency_audio,
        buffers: sized(10_000, 200),
        live,
        measure: Measure::Latency,
        timeout,
        typical,
        peer_default: false,
        ring_size: None,
        keep: 0,
        shmring_only: false,
        paired_with: None,
    };
    let w1 = throughput(
        "W1",
        "1920x1080 I420 video",
        hd,
        sized(2000, 20),
        timeout(90),
        typical(3.5),
    );
    let big_heap = (BIG_HEAP_FRAMES * hd.buffer_size()).div_ceil(PAGE) * PAGE;
    let w1_big_heap = Workload {
        id: "W1-64f",
        title: "1920x1080 I420 video, shmring heap of 64 frames",
        peer_default: false,
        ring_size: Some(big_heap),
        shmring_only: true,
        paired_with: Some("W1"),
        ..w1.clone()
    };
    let w5 = Workload {
        id: "W5",
        title: "1920x1080 I420 video, the reader keeps its last 8 frames",
        peer_default: false,
        keep: KEPT_FRAMES,
        paired_with: Some("W1"),
        ..w1.clone()
    };
    vec![
        w1,
        w1_big_heap,
        throughput(
            "W2",
            "3840x2160 I420 video",
            Media::Video {
                width: 3840,
                height: 2160,
            },
            sized(300, 5),
            timeout(90),
            typical(2.5),
        ),
        throughput(
            "W3",
            "S16LE stereo 48 kHz, 64 samples per buffer",
            Media::Audio { samples: 64 },
            sized(200_000, 2000),
            timeout(60),
            typical(2.5),
        ),
        latency(
            "W4-1kHz",
            "latency, 192-byte audio buffers at a steady 1 kHz",
            true,
            timeout(40),
            typical(10.5),
        ),
        latency(
            "W4-full",
            "latency, 192-byte audio buffers at full speed",
            false,
            timeout(30),
            typical(0.8),
        ),
        w5,
    ]
}
