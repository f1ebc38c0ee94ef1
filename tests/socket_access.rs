//! Who may read a stream: the socket's file mode decides, 0600 (the writer's
//! user only) unless the sink's `perms` says otherwise. A reader of another
//! user is refused with an error that names the mode, both users and the
//! property to change.
//!
//! These tests run the reader as `nobody` through setpriv, which needs root;
//! CI runs as root.

mod common;
use common::*;

const NOBODY: &[&str] = &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests switch users with setpriv and must run as root (CI does)"
    );
}

fn live_writer(scratch: &Scratch, perms: Option<&str>) -> Launch {
    let socket = scratch.socket().display().to_string();
    let perms = perms.map(|perms| format!("perms={perms}")).unwrap_or_default();
    start_writer(
        scratch,
        &format!(
            "videotestsrc is-live=true ! video/x-raw,width=160,height=120 ! shmringsink socket-path={socket} {perms}"
        ),
    )
}

#[test]
fn a_reader_of_another_user_is_refused_by_default() {
    require_root();
    let scratch = Scratch::new("other_user_refused");
    let mut writer = live_writer(&scratch, None);
    let reader = Launch::spawn_wrapped(
        &scratch,
        "reader as nobody",
        NOBODY,
        &format!(
            "shmringsrc socket-path={} is-live=true ! fakesink",
            scratch.socket().display()
        ),
    );
    let reader = reader.finish();
    reader.assert_failure("permission denied");
    for detail in ["mode 0600", "owned by uid 0", "runs as uid 65534", "perms=0660"] {
        assert!(
            reader.stderr.contains(detail),
            "the error does not say {detail:?}\n{}",
            reader.describe()
        );
    }
    writer.assert_running();
}

/// The control for the test above: with the mode opened up, the same reader
/// as the same other user reads the stream.
#[test]
fn a_reader_of_another_user_reads_when_perms_allow_it() {
    require_root();
    let scratch = Scratch::new("other_user_allowed");
    let mut writer = live_writer(&scratch, Some("0666"));
    let reader = Launch::spawn_wrapped(
        &scratch,
        "reader as nobody",
        NOBODY,
        &format!(
            "shmringsrc socket-path={} num-buffers=5 ! fakesink",
            scratch.socket().display()
        ),
    );
    reader.finish().assert_success();
    writer.assert_running();
}
