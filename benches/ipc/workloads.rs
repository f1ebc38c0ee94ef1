//! What flows through each transport: the four workloads of the comparison.

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
}

/// The workloads of a full run, or tiny ones for the smoke mode.
pub fn all(smoke: bool) -> Vec<Workload> {
    let sized = |full: u64, tiny: u64| if smoke { tiny } else { full };
    let timeout = |full: u64| Duration::from_secs(if smoke { 20 } else { full });
    let typical = |full: f64| Duration::from_secs_f64(if smoke { 0.5 } else { full });
    let latency_audio = Media::Audio {
        samples: AUDIO_RATE / 1000,
    };
    vec![
        Workload {
            id: "W1",
            title: "1920x1080 I420 video",
            media: Media::Video {
                width: 1920,
                height: 1080,
            },
            buffers: sized(2000, 20),
            live: false,
            measure: Measure::Throughput,
            timeout: timeout(90),
            typical: typical(3.5),
            peer_default: true,
        },
        Workload {
            id: "W2",
            title: "3840x2160 I420 video",
            media: Media::Video {
                width: 3840,
                height: 2160,
            },
            buffers: sized(300, 5),
            live: false,
            measure: Measure::Throughput,
            timeout: timeout(90),
            typical: typical(2.5),
            peer_default: true,
        },
        Workload {
            id: "W3",
            title: "S16LE stereo 48 kHz, 64 samples per buffer",
            media: Media::Audio { samples: 64 },
            buffers: sized(200_000, 2000),
            live: false,
            measure: Measure::Throughput,
            timeout: timeout(60),
            typical: typical(2.5),
            peer_default: true,
        },
        Workload {
            id: "W4-1kHz",
            title: "latency, 192-byte audio buffers at a steady 1 kHz",
            media: latency_audio,
            buffers: sized(10_000, 200),
            live: true,
            measure: Measure::Latency,
            timeout: timeout(40),
            typical: typical(10.5),
            peer_default: false,
        },
        Workload {
            id: "W4-full",
            title: "latency, 192-byte audio buffers at full speed",
            media: latency_audio,
            buffers: sized(10_000, 200),
            live: false,
            measure: Measure::Latency,
            timeout: timeout(30),
            typical: typical(0.8),
            peer_default: false,
        },
    ]
}
