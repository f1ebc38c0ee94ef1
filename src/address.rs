//! Where a stream's socket is, and the `shmring://` URIs that name it.
//!
//! A stream is found in one of two ways, the same on both ends:
//!
//! - by a socket path: `socket-path=/run/cam.sock`, URI
//!   `shmring:///run/cam.sock` (an absolute path after `shmring://`, so three
//!   slashes);
//! - by a stream name: `stream=cam`, URI `shmring://cam`. The socket is then
//!   `cam` in the stream directory, `$XDG_RUNTIME_DIR/shmring`, or
//!   `/tmp/shmring-UID` where `XDG_RUNTIME_DIR` is unset, which is created as
//!   needed with mode 0700: the user's streams are found in one place, and no
//!   other user can connect to them or put a socket of their own there.
//!
//! A name is one file name, so that it cannot reach out of that directory.
//! Characters a URI cannot hold as they are, in a name or a path, are written
//! as `%XX`.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The URI scheme both elements handle.
pub const SCHEME: &str = "shmring";

/// Why a socket address could not be made out.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error(
        "socket-path is not set, nor stream; set stream=NAME for a socket in the stream directory ($XDG_RUNTIME_DIR/shmring), or socket-path to a socket anywhere, e.g. socket-path=/tmp/cam"
    )]
    Unset,
    #[error(
        "socket-path ({0}) and stream ({1}) are both set, and they conflict: each names the socket on its own; unset one of them"
    )]
    BothSet(PathBuf, String),
    #[error(
        "{0:?} is not a stream name: a name is one file name, not empty, not \".\" or \"..\", with no '/' (for a socket elsewhere use socket-path)"
    )]
    BadName(String),
    #[error(
        "{uri:?} is not a shmring URI: {why}; write shmring://NAME for a named stream or shmring:///absolute/path for a socket path"
    )]
    BadUri { uri: String, why: &'static str },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "the stream directory {} belongs to uid {owner} with mode {mode:04o}, but must belong to this user (uid {uid}) and be closed to others, or others could reach or replace its sockets; remove it, or chmod 700 it if it is yours",
        path.display()
    )]
    NotPrivate {
        path: PathBuf,
        owner: u32,
        mode: u32,
        uid: u32,
    },
}

/// The socket of a stream, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Path(PathBuf),
    Stream(String),
}

impl Address {
    /// The address the `socket-path` and `stream` properties give together:
    /// exactly one of them must be set.
    pub fn from_properties(socket_path: Option<&Path>, stream: Option<&str>) -> Result<Self, AddressError> {
        match (socket_path, stream) {
            (Some(path), Some(name)) => Err(AddressError::BothSet(path.to_owned(), name.to_owned())),
            (Some(path), None) => Ok(Self::Path(path.to_owned())),
            (None, Some(name)) => {
                check_stream_name(name)?;
                Ok(Self::Stream(name.to_owned()))
            }
            (None, None) => Err(AddressError::Unset),
        }
    }

    /// Reads a `shmring://` URI.
    pub fn from_uri(uri: &str) -> Result<Self, AddressError> {
        let bad = |why| AddressError::BadUri {
            uri: uri.to_owned(),
            why,
        };
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| bad("it has no scheme"))?;
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(bad("its scheme is not shmring"));
        }
        if rest.contains(['?', '#']) {
            return Err(bad("it has a query or fragment, which shmring URIs do not take"));
        }
        if rest.starts_with('/') {
            let path = PathBuf::from(OsString::from_vec(
                percent_decode(rest).ok_or_else(|| bad("it has a malformed %-escape"))?,
            ));
            if path.file_name().is_none() {
                return Err(bad("its path names no file"));
            }
            return Ok(Self::Path(path));
        }
        if rest.contains('/') {
            return Err(bad("a stream name holds no '/', and a path must start with one"));
        }
        let name = percent_decode(rest).ok_or_else(|| bad("it has a malformed %-escape"))?;
        let name = String::from_utf8(name).map_err(|_| bad("its stream name is not UTF-8"))?;
        check_stream_name(&name)?;
        Ok(Self::Stream(name))
    }

    /// The URI that names this address; a relative socket path is made
    /// absolute first, since a URI cannot hold one.
    pub fn to_uri(&self) -> Result<String, AddressError> {
        match self {
            Self::Path(path) => {
                let absolute = std::path::absolute(path).map_err(|source| AddressError::Io {
                    what: "could not make an absolute path of",
                    path: path.clone(),
                    source,
                })?;
                Ok(format!(
                    "{SCHEME}://{}",
                    percent_encode(absolute.as_os_str().as_bytes(), b"/")
                ))
            }
            Self::Stream(name) => Ok(format!("{SCHEME}://{}", percent_encode(name.as_bytes(), b""))),
        }
    }

    /// The path of the socket, creating the stream directory if this is a
    /// named stream and the directory does not exist yet.
    pub fn socket_path(&self) -> Result<PathBuf, AddressError> {
        match self {
            Self::Path(path) => Ok(path.clone()),
            Self::Stream(name) => Ok(stream_directory()?.join(name)),
        }
    }
}

/// Accepts a name that is exactly one file name in the stream directory.
pub fn check_stream_name(name: &str) -> Result<(), AddressError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(AddressError::BadName(name.to_owned()));
    }
    Ok(())
}

/// The directory of named streams, created (mode 0700) if missing, and
/// checked to be this user's alone: under /tmp anyone could have made it
/// first.
pub fn stream_directory() -> Result<PathBuf, AddressError> {
    let uid = nix::unistd::geteuid().as_raw();
    let directory = match std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        Some(runtime) => PathBuf::from(runtime).join(SCHEME),
        None => std::env::temp_dir().join(format!("{SCHEME}-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&directory) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(AddressError::Io {
                what: "could not create the stream directory",
                path: directory,
                source,
            });
        }
    }
    // Not followed if it is a symbolic link: another user could point one
    // at a directory of theirs.
    let metadata = std::fs::symlink_metadata(&directory).map_err(|source| AddressError::Io {
        what: "could not inspect the stream directory",
        path: directory.clone(),
        source,
    })?;
    let mode = metadata.mode() & 0o7777;
    if !metadata.is_dir() || metadata.uid() != uid || mode & 0o077 != 0 {
        return Err(AddressError::NotPrivate {
            path: directory,
            owner: metadata.uid(),
            mode,
            uid,
        });
    }
    Ok(directory)
}

/// `%XX` escapes decoded; None if one is malformed or decodes to NUL, which
/// no path or name can hold.
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
            let byte = u8::from_str_radix(hex, 16).ok().filter(|&byte| byte != 0)?;
            decoded.push(byte);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    Some(decoded)
}

/// Every byte but RFC 3986's unreserved characters and `keep` as `%XX`.
fn percent_encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut encoded = String::with_capacity(bytes.len());
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || keep.contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_paths_and_streams() {
        assert_eq!(
            Address::from_uri("shmring:///run/user/1000/cam.sock").unwrap(),
            Address::Path("/run/user/1000/cam.sock".into())
        );
        assert_eq!(
            Address::from_uri("SHMRING://cam").unwrap(),
            Address::Stream("cam".into())
        );
        assert_eq!(
            Address::from_uri("shmring://front%20door").unwrap(),
            Address::Stream("front door".into())
        );
        assert_eq!(
            Address::from_uri("shmring:///tmp/a%20b/%C3%A9.sock").unwrap(),
            Address::Path("/tmp/a b/é.sock".into())
        );
    }

    #[test]
    fn uris_round_trip() {
        for address in [
            Address::Path("/tmp/a b/%x/é.sock".into()),
            Address::Path(PathBuf::from(OsString::from_vec(b"/tmp/\xff".to_vec()))),
            Address::Stream("front door?#%".into()),
            Address::Stream("cam".into()),
        ] {
            let uri = address.to_uri().unwrap();
            assert_eq!(Address::from_uri(&uri).unwrap(), address, "{uri}");
        }
        assert_eq!(Address::Stream("a b".into()).to_uri().unwrap(), "shmring://a%20b");
        assert_eq!(
            Address::Path("/x/y.sock".into()).to_uri().unwrap(),
            "shmring:///x/y.sock"
        );
    }

    #[test]
    fn bad_uris_are_refused_with_the_reason() {
        for (uri, reason) in [
            ("file:///tmp/x", "scheme is not shmring"),
            ("shmring:/tmp/x", "no scheme"),
            ("shmring://host/path", "holds no '/'"),
            ("shmring://cam?x=1", "query"),
            ("shmring://%zz", "malformed"),
            ("shmring://%00", "malformed"),
            ("shmring:///", "names no file"),
            ("shmring://", "not a stream name"),
            ("shmring://..", "not a stream name"),
            ("shmring://%2F", "not a stream name"),
        ] {
            let err = Address::from_uri(uri).unwrap_err().to_string();
            assert!(err.contains(reason), "{uri}: {err}");
        }
    }

    #[test]
    fn properties_name_exactly_one_socket() {
        assert!(matches!(
            Address::from_properties(Some(Path::new("/a")), Some("b")),
            Err(AddressError::BothSet(..))
        ));
        assert!(matches!(Address::from_properties(None, None), Err(AddressError::Unset)));
        for bad in ["", ".", "..", "a/b", "/"] {
            assert!(
                matches!(Address::from_properties(None, Some(bad)), Err(AddressError::BadName(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            Address::from_properties(None, Some("..cam")).unwrap(),
            Address::Stream("..cam".into())
        );
    }
}
