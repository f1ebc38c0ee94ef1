//! What the tests that run `gst-launch-1.0` children share: a scratch
//! directory per test, the child processes with their output kept in files,
//! and the plugin cargo built for this run.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::fs::{self, File};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::thread;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;

/// How long any child or in-process pipeline may run. Far above what any
/// test needs on a loaded 2-core machine: it only turns a hang into a failure.
pub const DEADLINE: Duration = Duration::from_secs(120);
/// How often waits look again. It decides how soon a wait notices, never what
/// it concludes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long `Launch::kill` lets a script clean up after SIGTERM.
pub const TERM_GRACE: Duration = Duration::from_secs(5);
/// gst-launch prints one of these once `set_state(PAUSED)` has returned, that
/// is after every element's `start()`: a sink is then listening on its socket,
/// and a source is waiting for its writer.
pub const STARTED: &[&str] = &["Pipeline is PREROLLING", "Pipeline is live and does not need PREROLL"];
/// How much of a child's output a failure message quotes: enough for the
/// error, short enough to read when the child ran with `-v`.
pub const QUOTED_OUTPUT: usize = 4000;

/// The directory holding the `libgstshmring.so` that cargo built for this run.
pub fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // The test binary is target/<profile>/deps/<test>-<hash>, and the
    // cdylib built with it sits beside it. Cargo copies it up to
    // target/<profile> only for `cargo build`, not for `cargo test`, so the
    // copy there may be older than the code under test. GStreamer also finds
    // the proc-macro libraries there; it records once that they are not
    // plugins and skips them afterwards.
    let dir = exe
        .parent()
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf();
    assert!(
        dir.join("libgstshmring.so").is_file(),
        "no libgstshmring.so in {}; cargo should have built it",
        dir.display()
    );
    dir
}

/// A fresh directory for one test's socket and files, removed on drop, also
/// when the test fails, because some tests leave close to 2 GB in it.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shmring-{}-{test}", std::process::id()));
        // Pipeline descriptions are split on whitespace (see `Launch::spawn`).
        assert!(
            !dir.to_string_lossy().contains(char::is_whitespace),
            "the temp dir {} contains whitespace",
            dir.display()
        );
        // A directory left by an earlier run under a recycled pid would hold
        // its socket and output files.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("creating {}: {err}", dir.display()));
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("ring.sock")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn is_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_socket())
}

/// The last `QUOTED_OUTPUT` bytes of `text`, cut at a character boundary.
pub fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(QUOTED_OUTPUT);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A child's output for a failure message.
pub fn describe(name: &str, stdout: &str, stderr: &str) -> String {
    format!(
        "--- {name} stdout (tail) ---\n{}\n--- {name} stderr (tail) ---\n{}",
        tail(stdout),
        tail(stderr)
    )
}

/// A `gst-launch-1.0` child, run with `G_DEBUG=fatal-criticals`. Dropping it
/// kills the child if it still runs, so a failing test leaves no process
/// behind.
pub struct Launch {
    pub name: String,
    child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    deadline: Instant,
    /// Started by `spawn_command`: the child leads a process group.
    own_group: bool,
}

impl Launch {
    /// Starts `gst-launch-1.0` with `description` split on whitespace, which
    /// is why scratch paths must not contain any.
    pub fn spawn(scratch: &Scratch, name: &str, description: &str) -> Self {
        Self::spawn_wrapped(scratch, name, &[], description)
    }

    /// Like [`Launch::spawn`], with gst-launch-1.0 run by `wrapper` (a
    /// command and its arguments, such as `setpriv --reuid=...`), and with
    /// GStreamer's registry and HOME in the scratch directory, which the
    /// wrapped process may need to write.
    pub fn spawn_wrapped(scratch: &Scratch, name: &str, wrapper: &[&str], description: &str) -> Self {
        let mut command = match wrapper.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg("gst-launch-1.0");
                let home = scratch.path(&format!("{name}.home"));
                fs::create_dir_all(&home).unwrap_or_else(|err| panic!("creating {}: {err}", home.display()));
                fs::set_permissions(&home, fs::Permissions::from_mode(0o777))
                    .unwrap_or_else(|err| panic!("opening {} to every user: {err}", home.display()));
                command
                    .env("HOME", &home)
                    .env("GST_REGISTRY", home.join("registry.bin"));
                command
            }
            None => Command::new("gst-launch-1.0"),
        };
        command.args(description.split_whitespace());
        Self::start(scratch, name, command, false)
    }

    /// Starts any program (a script, say) the way `spawn` starts
    /// gst-launch-1.0: with the plugin, fatal criticals and output in files.
    /// It runs in a process group of its own, which `kill` ends whole, so
    /// that a script's own children do not outlive a failed test.
    pub fn spawn_command(scratch: &Scratch, name: &str, command: Command) -> Self {
        Self::start(scratch, name, command, true)
    }

    fn start(scratch: &Scratch, name: &str, mut command: Command, own_group: bool) -> Self {
        let stdout = scratch.path(&format!("{name}.stdout"));
        let stderr = scratch.path(&format!("{name}.stderr"));
        let create =
            |path: &Path| File::create(path).unwrap_or_else(|err| panic!("creating {}: {err}", path.display()));
        if own_group {
            command.process_group(0);
        }
        // Output goes to files, not pipes: a child under `-v` prints a lot,
        // and a pipe that nobody drains would block it.
        let child = command
            .env("GST_PLUGIN_PATH", plugin_dir())
            .env("G_DEBUG", "fatal-criticals")
            .stdin(Stdio::null())
            .stdout(create(&stdout))
            .stderr(create(&stderr))
            .spawn()
            .unwrap_or_else(|err| panic!("spawning {:?} for the {name}: {err}", command.get_program()));
        Self {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            deadline: Instant::now() + DEADLINE,
            own_group,
        }
    }

    /// Starts any program, such as an example, the way [`Launch::spawn`]
    /// starts gst-launch-1.0: with `G_DEBUG=fatal-criticals`, this build's
    /// plugin on `GST_PLUGIN_PATH`, and its output kept in files.
    pub fn spawn_program<A: AsRef<std::ffi::OsStr>>(
        scratch: &Scratch,
        name: &str,
        program: &Path,
        arguments: impl IntoIterator<Item = A>,
    ) -> Self {
        let mut command = Command::new(program);
        command.args(arguments);
        Self::start(scratch, name, command, false)
    }

    /// Gives a child that must do more than any pipeline (a release build,
    /// say) `deadline` from now instead of [`DEADLINE`].
    pub fn allow(&mut self, deadline: Duration) {
        self.deadline = Instant::now() + deadline;
    }

    pub fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn describe(&self) -> String {
        describe(&self.name, &self.stdout_text(), &self.stderr_text())
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|err| panic!("waiting for the {}: {err}", self.name))
    }

    /// Waits until the child's stdout contains one of `needles`. A child that
    /// exits first, or the deadline, fails the test.
    pub fn wait_for_stdout(&mut self, needles: &[&str]) {
        loop {
            // Checked before reading, so that everything the child printed
            // before it exited is in the text read below.
            let exited = self.exited();
            let stdout = self.stdout_text();
            if needles.iter().any(|needle| stdout.contains(needle)) {
                return;
            }
            if let Some(status) = exited {
                panic!(
                    "the {} exited ({status}) before printing any of {needles:?}\n{}",
                    self.name,
                    self.describe()
                );
            }
            if Instant::now() >= self.deadline {
                panic!(
                    "the {} printed none of {needles:?} within {DEADLINE:?}\n{}",
                    self.name,
                    self.describe()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until the child has started all its elements (see `STARTED`).
    pub fn wait_until_started(&mut self) {
        self.wait_for_stdout(STARTED);
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!(
                "the {} exited ({status}) but should still run\n{}",
                self.name,
                self.describe()
            );
        }
    }

    /// Sends SIGKILL, as a crash would end the process, and reaps it. A
    /// child from `spawn_command` first gets SIGTERM, so that a script can
    /// end what it started in other process groups (run-all.sh), and then
    /// SIGKILL with its whole process group.
    pub fn kill(&mut self) {
        if self.own_group {
            // Errors are left: once the script has exited and been reaped,
            // its group may be empty (ESRCH), which is the aim.
            let _ = self.signal(libc::SIGTERM);
            let deadline = Instant::now() + TERM_GRACE;
            while self.exited().is_none() && Instant::now() < deadline {
                thread::sleep(POLL_INTERVAL);
            }
            let _ = self.signal(libc::SIGKILL);
        } else {
            self.child
                .kill()
                .unwrap_or_else(|err| panic!("killing the {}: {err}", self.name));
        }
        let _ = self.child.wait();
    }

    /// Sends SIGINT, as Ctrl-C in a terminal would (to the process group of
    /// a child from `spawn_command`): `gst-launch-1.0 -e` answers it with EOS.
    pub fn interrupt(&mut self) {
        self.signal(libc::SIGINT)
            .unwrap_or_else(|err| panic!("interrupting the {}: {err}", self.name));
    }

    /// Stops the child (SIGSTOP) where it is, as a reader too busy to read
    /// would be, until [`Launch::thaw`].
    pub fn freeze(&mut self) {
        self.signal(libc::SIGSTOP)
            .unwrap_or_else(|err| panic!("stopping the {}: {err}", self.name));
    }

    pub fn thaw(&mut self) {
        self.signal(libc::SIGCONT)
            .unwrap_or_else(|err| panic!("continuing the {}: {err}", self.name));
    }

    fn signal(&self, signal: libc::c_int) -> std::io::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits a pid_t");
        let target = if self.own_group { -pid } else { pid };
        // SAFETY: kill(2) takes no pointers. The kernel keeps the child's
        // pid, and so the id of the group it leads, from being reused until
        // the child is reaped and the group has no member left.
        if unsafe { libc::kill(target, signal) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Waits for the child to exit. Past the deadline it is killed and the
    /// test fails.
    pub fn finish(mut self) -> Finished {
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            if Instant::now() >= self.deadline {
                self.kill();
                panic!(
                    "the {} did not exit within {DEADLINE:?} and was killed\n{}",
                    self.name,
                    self.describe()
                );
            }
            thread::sleep(POLL_INTERVAL);
        };
        Finished {
            name: self.name.clone(),
            status,
            stdout: self.stdout_text(),
            stderr: self.stderr_text(),
        }
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|status| status.is_none()) {
            self.kill();
        }
    }
}

/// What an exited child left behind.
pub struct Finished {
    pub name: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn describe(&self) -> String {
        describe(&self.name, &self.stdout, &self.stderr)
    }

    /// Whatever the outcome, a GStreamer-CRITICAL is a bug. Under
    /// `fatal-criticals` the child also died of it, but its exit alone would
    /// not say why.
    pub fn assert_no_critical(&self) {
        assert!(
            !self.stderr.contains("CRITICAL"),
            "the {} logged a CRITICAL ({})\n{}",
            self.name,
            self.status,
            self.describe()
        );
    }

    pub fn assert_success(&self) {
        self.assert_no_critical();
        assert!(
            self.status.success(),
            "the {} failed ({})\n{}",
            self.name,
            self.status,
            self.describe()
        );
    }

    pub fn assert_failed(&self) {
        self.assert_no_critical();
        assert!(
            !self.status.success(),
            "the {} should have failed but exited 0\n{}",
            self.name,
            self.describe()
        );
    }

    /// The child failed, and its stderr (where gst-launch prints error
    /// messages) says `expected`.
    pub fn assert_failure(&self, expected: &str) {
        self.assert_failed();
        assert!(
            self.stderr.contains(expected),
            "the {} failed ({}) but its stderr does not say {expected:?}\n{}",
            self.name,
            self.status,
            self.describe()
        );
    }
}

/// Starts a writer and waits until it listens. Tests whose subject is not
/// start-up order use this, so that their reader never waits while the writer
/// sets up its socket: that is when the race behind the known hang in
/// `reader_started_first` happens.
pub fn start_writer(scratch: &Scratch, description: &str) -> Launch {
    let mut writer = Launch::spawn(scratch, "writer", description);
    writer.wait_until_started();
    writer
}

/// Every GLib critical or warning logged in this test process, in order.
static CRITICALS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Initializes GStreamer in the test process, once for all its tests, with
/// the plugin registered from the rlib (built from the same sources as the
/// .so the children load). G_DEBUG is read when GLib loads, before a test
/// could set it, so this process catches criticals and warnings with a log
/// handler instead: see [`logged_criticals`].
pub fn init_gst() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer initializes");
        gstshmring::plugin_register_static().expect("the shmring plugin registers");
        glib::log_set_default_handler(|domain, level, message| {
            if matches!(level, glib::LogLevel::Critical | glib::LogLevel::Warning) {
                logged_criticals().push(format!("{}-{level:?}: {message}", domain.unwrap_or("?")));
            }
            glib::log_default_handler(domain, level, Some(message));
        });
    });
}

/// The GLib criticals and warnings logged in this process so far.
pub fn logged_criticals() -> MutexGuard<'static, Vec<String>> {
    CRITICALS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Fails if GLib logged a critical or warning in this process; `whom`
/// names it in the message.
pub fn assert_no_criticals_here(whom: &str) {
    let criticals = logged_criticals();
    assert!(criticals.is_empty(), "GLib logged in {whom}:\n{}", criticals.join("\n"));
}

/// SplitMix64: a fixed sequence per seed, so that a failing run reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// A delay of up to `max`, in whole milliseconds.
    pub fn delay(&mut self, max: Duration) -> Duration {
        Duration::from_millis(self.next() % (max.as_millis() as u64 + 1))
    }
}

/// Parses an in-process pipeline (GStreamer initialized first).
pub fn parse_pipeline(description: &str) -> gst::Pipeline {
    init_gst();
    gst::parse::launch(description)
        .unwrap_or_else(|err| panic!("parsing {description:?}: {err}"))
        .downcast::<gst::Pipeline>()
        .expect("a description with several elements makes a pipeline")
}

/// Waits for an in-process pipeline that is already started to reach EOS,
/// then stops it. An error, or no EOS before the deadline, fails the test.
pub fn wait_for_eos(pipeline: &gst::Pipeline, what: &str) {
    wait_for_eos_counting_qos(pipeline, what);
}

/// Like [`wait_for_eos`]; returns the (processed, dropped) buffer counts of
/// the QoS messages posted meanwhile.
pub fn wait_for_eos_counting_qos(pipeline: &gst::Pipeline, what: &str) -> Vec<(u64, u64)> {
    let mut qos = Vec::new();
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let deadline = Instant::now() + DEADLINE;
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(format!("the {what} did not reach EOS within {DEADLINE:?}"));
        }
        let Some(message) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(left.as_millis() as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error, gst::MessageType::Qos],
        ) else {
            continue;
        };
        match message.view() {
            gst::MessageView::Error(err) => {
                break Err(format!(
                    "the {what} failed: {} ({:?})",
                    err.error(),
                    err.debug().unwrap_or_default()
                ));
            }
            gst::MessageView::Qos(message) => {
                let (processed, dropped) = message.stats();
                let count = |value: gst::GenericFormattedValue| match value {
                    gst::GenericFormattedValue::Buffers(Some(count)) => *count,
                    other => panic!("a QoS count in {other:?}, not buffers"),
                };
                qos.push((count(processed), count(dropped)));
            }
            _ => break Ok(()),
        }
    };
    // Stopping also wakes a shmring element still waiting for its peer, so
    // this cannot hang even when the wait above timed out.
    pipeline
        .set_state(gst::State::Null)
        .unwrap_or_else(|err| panic!("stopping the {what}: {err}"));
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    qos
}

/// Starts `pipeline` and runs it to EOS (see [`wait_for_eos`]).
pub fn play_to_eos(pipeline: &gst::Pipeline, what: &str) {
    pipeline
        .set_state(gst::State::Playing)
        .unwrap_or_else(|err| panic!("starting the {what}: {err}"));
    wait_for_eos(pipeline, what);
}

/// Polls `condition` until it holds; past `limit` the test fails, naming
/// `what`. The limit only bounds a hang: nothing is timed.
pub fn wait_until_within(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        thread::sleep(POLL_INTERVAL);
    }
}

/// [`wait_until_within`] the usual [`DEADLINE`].
pub fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    wait_until_within(DEADLINE, what, condition);
}

/// Counts the buffers that reach `element`'s sink pad. The probe runs
/// before the element gets the buffer, so once the count reaches n, every
/// buffer before the n-th has been handled.
pub fn count_buffers(element: &gst::Element) -> Arc<AtomicU64> {
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    element
        .static_pad("sink")
        .unwrap_or_else(|| panic!("{} has no sink pad", element.name()))
        .add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |_, info| {
                let buffers = match &info.data {
                    Some(gst::PadProbeData::BufferList(list)) => list.len() as u64,
                    _ => 1,
                };
                counted.fetch_add(buffers, Ordering::SeqCst);
                gst::PadProbeReturn::Ok
            },
        );
    count
}

/// The buffer lines of `checksumsink`'s output (a timestamp and a SHA-1),
/// in order.
pub fn checksums(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|line| {
            let mut fields = line.split(' ');
            let (Some(time), Some(sum), None) = (fields.next(), fields.next(), fields.next()) else {
                return false;
            };
            time.contains(':') && sum.len() == 40 && sum.chars().all(|c| c.is_ascii_hexdigit())
        })
        .map(str::to_owned)
        .collect()
}
