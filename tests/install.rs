//! `scripts/install.sh` installs the plugin where GStreamer finds it with no
//! GST_PLUGIN_PATH: for a user whose HOME is a scratch directory, and, with
//! `--system`, into the pluginsdir pkg-config reports (a stand-in
//! gstreamer-1.0.pc in the scratch directory, so that no system file is
//! touched).
//!
//! The script builds the release plugin in this run's target directory: the
//! first run pays for one release build (about 2 minutes on 2 cores), later
//! ones reuse it. Nothing here may change an environment variable that a
//! build script watches (PKG_CONFIG_PATH, say), or every run would rebuild.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Launch, Scratch};

/// How long the script may take: a release build from nothing, on a loaded
/// 2-core machine, with room to spare.
const INSTALL_DEADLINE: Duration = Duration::from_secs(20 * 60);

/// The target directory this test binary was built in: the script builds
/// there too, so its release build is shared with other runs.
fn target_dir() -> PathBuf {
    common::plugin_dir()
        .ancestors()
        .nth(2)
        .expect("the plugin is in target/<profile>/deps")
        .to_path_buf()
}

/// A command that sees `home` as HOME and no plugin path, data directory or
/// registry of the caller's, as in a new login shell of a new user; cargo
/// and rustup keep their real homes, so nothing is downloaded again. It
/// runs under `env -u GST_PLUGIN_PATH`, since `Launch` gives every child
/// this build's plugin directory there.
fn fresh_shell(program: &str, home: &Path) -> Command {
    let mut command = Command::new("env");
    command.args(["-u", "GST_PLUGIN_PATH", program]);
    let real_home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let cargo = PathBuf::from(env!("CARGO"));
    let mut path = std::ffi::OsString::from(cargo.parent().expect("cargo is in a directory"));
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    command
        .env_remove("GST_PLUGIN_PATH")
        .env_remove("GST_PLUGIN_PATH_1_0")
        .env_remove("GST_PLUGIN_SYSTEM_PATH")
        .env_remove("GST_PLUGIN_SYSTEM_PATH_1_0")
        .env_remove("XDG_DATA_HOME")
        .env("HOME", home)
        .env("GST_REGISTRY", home.join("registry.bin"))
        .env("PATH", path)
        .env(
            "CARGO_HOME",
            std::env::var_os("CARGO_HOME").unwrap_or_else(|| real_home.join(".cargo").into()),
        )
        .env(
            "RUSTUP_HOME",
            std::env::var_os("RUSTUP_HOME").unwrap_or_else(|| real_home.join(".rustup").into()),
        )
        .env("CARGO_TARGET_DIR", target_dir());
    command
}

/// Runs `scripts/install.sh` with `arguments` in `command` (a
/// [`fresh_shell`] of bash) to the end.
fn install(scratch: &Scratch, mut command: Command, arguments: &[&str]) {
    command
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh"))
        .args(arguments);
    let mut install = Launch::spawn_command(scratch, "install", command);
    install.allow(INSTALL_DEADLINE);
    install.finish().assert_success();
}

/// `gst-inspect-1.0 shmringsink` as a fresh shell of `home` runs it.
fn inspect(scratch: &Scratch, name: &str, home: &Path) -> common::Finished {
    let mut command = fresh_shell("gst-inspect-1.0", home);
    command.arg("shmringsink");
    Launch::spawn_command(scratch, name, command).finish()
}

#[test]
fn install_for_the_user_is_found_without_a_plugin_path() {
    let scratch = Scratch::new("install_user");
    let home = scratch.path("home");
    fs::create_dir(&home).unwrap();

    // Nothing else on the way gives GStreamer the plugin.
    inspect(&scratch, "inspect-before", &home).assert_failure("No such element or plugin 'shmringsink'");

    install(&scratch, fresh_shell("bash", &home), &[]);

    let installed = home.join(".local/share/gstreamer-1.0/plugins/libgstshmring.so");
    assert!(installed.is_file(), "no {}", installed.display());
    let after = inspect(&scratch, "inspect-after", &home);
    after.assert_success();
    let installed = installed.display().to_string();
    assert!(
        after
            .stdout
            .lines()
            .any(|line| line.trim_start().starts_with("Filename") && line.trim_end().ends_with(&installed)),
        "gst-inspect-1.0 did not load the installed plugin\n{}",
        after.describe()
    );
}

#[test]
fn install_for_the_system_uses_the_pluginsdir_of_pkg_config() {
    let scratch = Scratch::new("install_system");
    let home = scratch.path("home");
    fs::create_dir(&home).unwrap();
    let pluginsdir = scratch.path("system-plugins");
    let pkgconfig = scratch.path("pkgconfig");
    fs::create_dir(&pkgconfig).unwrap();
    let bin = scratch.path("bin");
    fs::create_dir(&bin).unwrap();
    let real = Command::new("pkg-config")
        .args(["--variable=pcfiledir", "gstreamer-1.0"])
        .output()
        .expect("pkg-config runs");
    let real = PathBuf::from(String::from_utf8(real.stdout).unwrap().trim());
    let original = fs::read_to_string(real.join("gstreamer-1.0.pc")).expect("gstreamer-1.0.pc is installed");
    let stand_in: String = original
        .lines()
        .map(|line| match line.starts_with("pluginsdir=") {
            true => format!("pluginsdir={}\n", pluginsdir.display()),
            false => format!("{line}\n"),
        })
        .collect();
    assert_ne!(original, stand_in, "gstreamer-1.0.pc has no pluginsdir line");
    fs::write(pkgconfig.join("gstreamer-1.0.pc"), stand_in).unwrap();
    // A pkg-config first on PATH that reads the stand-in: PKG_CONFIG_PATH
    // itself would make cargo rebuild the GStreamer bindings.
    let wrapper = bin.join("pkg-config");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nPKG_CONFIG_PATH={} exec /usr/bin/pkg-config \"$@\"\n",
            pkgconfig.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();

    let mut command = fresh_shell("bash", &home);
    let mut path = bin.into_os_string();
    path.push(":");
    path.push(
        command
            .get_envs()
            .find(|(name, _)| *name == "PATH")
            .and_then(|(_, value)| value)
            .expect("fresh_shell sets PATH"),
    );
    command.env("PATH", path);
    install(&scratch, command, &["--system"]);
    assert!(pluginsdir.join("libgstshmring.so").is_file());
    assert!(
        !home.join(".local/share/gstreamer-1.0").exists(),
        "--system also installed for the user"
    );
}
