//! Names of metadata files and target files, and their percent-encoding in URLs and file names.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Characters Python's `urllib.parse.quote(s, safe="")` leaves alone.
const ROLE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~');

/// Characters Python's `urllib.parse.quote(s)` leaves alone (it keeps `/`).
const PATH: &AsciiSet = &ROLE.remove(b'/');

/// A role or target name with every reserved character encoded, `/` included: safe as one
/// URL path segment and as one file name.
pub fn encode_component(name: &str) -> String {
    utf8_percent_encode(name, ROLE).to_string()
}

/// A target path encoded for a URL, keeping its `/` separators.
pub fn encode_path(path: &str) -> String {
    utf8_percent_encode(path, PATH).to_string()
}

/// The snapshot entry of a targets role: `<role>.json`.
pub fn role_file(role: &str) -> String {
    format!("{role}.json")
}

/// The remote file name of a role's metadata: `[<version>.]<encoded role>.json`.
pub fn metadata_url_name(role: &str, version: Option<u64>) -> String {
    let role = encode_component(role);
    match version {
        Some(v) => format!("{v}.{role}.json"),
        None => format!("{role}.json"),
    }
}

/// The remote path of a target, relative to the targets base URL: with consistent snapshots
/// `<dir>/<hash>.<basename>` with the first listed hash, else the path itself; encoded.
pub fn target_url_path(path: &str, first_hash: Option<&str>) -> String {
    match first_hash {
        Some(hash) => {
            let (dir, base) = match path.rfind('/') {
                Some(i) => (&path[..=i], &path[i + 1..]),
                None => ("", path),
            };
            encode_path(&format!("{dir}{hash}.{base}"))
        }
        None => encode_path(path),
    }
}

/// Checks a target path before it is used: not empty, no empty, `.` or `..` segments,
/// not absolute, no NUL.
pub fn validate_target_path(path: &str) -> crate::Result<()> {
    let bad = |reason| {
        Err(crate::Error::InvalidName {
            name: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.contains('\0') {
        return bad("contains NUL");
    }
    if path.starts_with('/') {
        return bad("absolute");
    }
    if path.split('/').any(|s| s == ".." || s == ".") {
        return bad("has a . or .. segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_python_quote() {
        assert_eq!(encode_component("a/b c?.json"), "a%2Fb%20c%3F.json");
        assert_eq!(encode_component("role-1_x.~"), "role-1_x.~");
        assert_eq!(encode_path("dir/a b#.txt"), "dir/a%20b%23.txt");
        assert_eq!(metadata_url_name("a/b", Some(3)), "3.a%2Fb.json");
    }

    #[test]
    fn consistent_target_names_prefix_the_basename() {
        assert_eq!(
            target_url_path("dir/sub/file.txt", Some("abc")),
            "dir/sub/abc.file.txt"
        );
        assert_eq!(target_url_path("file.txt", Some("abc")), "abc.file.txt");
        assert_eq!(target_url_path("file.txt", None), "file.txt");
    }

    #[test]
    fn traversal_in_target_paths_is_rejected() {
        for bad in ["", "/etc/passwd", "a/../../b", "./a", "a\0b"] {
            assert!(validate_target_path(bad).is_err(), "{bad:?}");
        }
        assert!(validate_target_path("dir/file.txt").is_ok());
    }
}
