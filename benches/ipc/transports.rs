//! The transports compared, and the exact pipelines each one runs.
//!
//! Every writer ends in an element named `tx` and every reader starts with
//! one named `rx`: the writer stamps and counts on `tx.sink`, the reader
//! counts and measures on `rx.src`, the first pad a buffer reaches after
//! crossing. Every reader ends in a fakesink named `out`, where a consumer
//! that keeps buffers (W5) keeps them. The in-process limit is the producer
//! straight into that fakesink, with no queue: it stamps and measures on
//! `out.sink`. Its queued variant has a `queue` named `q` in place of the
//! transport.

use std::path::Path;

use crate::workloads::Workload;

/// Where the reader ends, for every transport.
const READER_SINK: &str = "fakesink name=out sync=false enable-last-sample=false";
/// The pad of the reader's sink, where W5's consumer keeps its buffers.
pub const KEEP_PAD: &str = "out.sink";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// shmringsink → shmringsrc.
    Shmring,
    /// The same pipelines, with the plugin from `--baseline-plugin`: an older
    /// build to compare against.
    ShmringBaseline,
    /// shmsink → shmsrc with an area sized for the workload.
    Shm,
    /// shmsink → shmsrc as it comes (64 MiB area), run once per workload.
    ShmDefault,
    /// fdsink → pipe → fdsrc.
    Pipe,
    /// The limit: producer and consumer in one process, linked directly,
    /// with no queue and no second thread.
    Limit,
    /// Producer and consumer in one process, joined by a `queue`: a thread
    /// handoff on every buffer. Shown for reference only; a ratio against it
    /// flatters a transport.
    LimitQueue,
}

/// The transports of each round, in the order they run; the baseline, if
/// any, right after shmring, so that each pair runs back to back.
pub fn round(baseline: bool) -> Vec<Transport> {
    let baseline = baseline.then_some(Transport::ShmringBaseline);
    [Transport::Shmring]
        .into_iter()
        .chain(baseline)
        .chain([Transport::Shm, Transport::Pipe, Transport::Limit, Transport::LimitQueue])
        .collect()
}

/// The pads the child processes put their probes on.
pub struct ProbePads {
    /// Where the writer counts (and, for latency, stamps) its buffers.
    pub stamp: &'static str,
    /// Where the reader counts (and, for latency, measures) what arrives.
    pub measure: &'static str,
}

/// The pipelines of one transport for one workload. The limit has only a
/// writer, which is also its reader.
pub struct Pipelines {
    pub writer: String,
    pub reader: Option<String>,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Shmring => "shmring",
            Transport::ShmringBaseline => "shmring (baseline build)",
            Transport::Shm => "shmsink/shmsrc",
            Transport::ShmDefault => "shmsink/shmsrc, default shm-size",
            Transport::Pipe => "pipe (fdsink/fdsrc)",
            Transport::Limit => "in-process, no queue (limit)",
            Transport::LimitQueue => "in-process with a queue (not the limit)",
        }
    }

    /// A name for files.
    pub fn key(self) -> &'static str {
        match self {
            Transport::Shmring => "shmring",
            Transport::ShmringBaseline => "shmring-baseline",
            Transport::Shm => "shm",
            Transport::ShmDefault => "shm-default",
            Transport::Pipe => "pipe",
            Transport::Limit => "limit",
            Transport::LimitQueue => "limit-queue",
        }
    }

    /// Whether the writer listens on a unix socket that the reader needs.
    pub fn uses_socket(self) -> bool {
        matches!(
            self,
            Transport::Shmring | Transport::ShmringBaseline | Transport::Shm | Transport::ShmDefault
        )
    }

    /// Whether this is shmring, the current build's or the baseline's.
    pub fn is_shmring(self) -> bool {
        matches!(self, Transport::Shmring | Transport::ShmringBaseline)
    }

    /// Whether producer and consumer share one process.
    pub fn in_process(self) -> bool {
        matches!(self, Transport::Limit | Transport::LimitQueue)
    }

    /// Whether `workload` runs on this transport.
    pub fn runs(self, workload: &Workload) -> bool {
        self.is_shmring() || !workload.shmring_only
    }

    /// Whether the writer's stdout is piped into the reader's stdin.
    pub fn uses_pipe(self) -> bool {
        self == Transport::Pipe
    }

    pub fn probe_pads(self) -> ProbePads {
        match self {
            // One pad: the stamp probe was added first, so it runs first.
            Transport::Limit => ProbePads {
                stamp: KEEP_PAD,
                measure: KEEP_PAD,
            },
            Transport::LimitQueue => ProbePads {
                stamp: "q.sink",
                measure: "q.src",
            },
            _ => ProbePads {
                stamp: "tx.sink",
                measure: "rx.src",
            },
        }
    }

    pub fn pipelines(self, workload: &Workload, socket: &Path) -> Pipelines {
        let media = workload.media;
        let producer = media.producer(workload.buffers, workload.live);
        let socket = socket.display();
        let (sink, reader) = match self {
            Transport::Shmring | Transport::ShmringBaseline => (
                format!(
                    "shmringsink name=tx socket-path={socket}{} sync=false",
                    workload
                        .ring_size
                        .map_or_else(String::new, |bytes| format!(" ring-size={bytes}"))
                ),
                Some(format!("shmringsrc name=rx socket-path={socket} ! {READER_SINK}")),
            ),
            Transport::Shm | Transport::ShmDefault => {
                let size = match self {
                    Transport::Shm => format!(" shm-size={}", workload.peer_shm_size()),
                    _ => String::new(),
                };
                (
                    format!("shmsink name=tx socket-path={socket}{size} sync=false wait-for-connection=true"),
                    Some(format!(
                        "shmsrc name=rx socket-path={socket} ! {} ! {READER_SINK}",
                        media.caps()
                    )),
                )
            }
            Transport::Pipe => (
                "fdsink name=tx fd=1 sync=false".to_owned(),
                Some(format!("fdsrc name=rx fd=0 ! {} ! {READER_SINK}", media.raw_parser())),
            ),
            Transport::Limit => (READER_SINK.to_owned(), None),
            Transport::LimitQueue => (format!("queue name=q ! {READER_SINK}"), None),
        };
        Pipelines {
            writer: format!("{producer} ! {sink}"),
            reader,
        }
    }

    /// The shell command a reader of RESULTS.md can paste to rerun this
    /// transport by hand (the plugin found through `GST_PLUGIN_PATH`).
    pub fn shell_command(self, workload: &Workload) -> String {
        let socket = Path::new("/tmp/ipc-bench.sock");
        let Pipelines { writer, reader } = self.pipelines(workload, socket);
        match (self, reader) {
            (Transport::Pipe, Some(reader)) => format!("gst-launch-1.0 -q {writer} \\\n  | gst-launch-1.0 -q {reader}"),
            (_, Some(reader)) => format!("gst-launch-1.0 {writer} &\ngst-launch-1.0 {reader}"),
            (_, None) => format!("gst-launch-1.0 {writer}"),
        }
    }
}
