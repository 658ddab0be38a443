//! Configuration as aktualizr reads it: `sota.toml` files from `/usr/lib/sota/conf.d` then
//! `/etc/sota/conf.d` (or the `-c` paths), merged by file name, applied in name order.
//!
//! aktualizr parses these files with boost's INI parser, not a TOML parser: values may be
//! quoted or not (`polling_sec = 10`, `server = "https://…"`, `os = lmp` are all fine), there
//! are no arrays or inline tables. This module does the same, then checks every known key's
//! type and names the file, the key and the expected type when it is wrong. Unknown keys are
//! kept and reported as warnings (aktualizr-lite's `[pacman]` extras among them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The directories read when no `-c` is given, in order.
pub const DEFAULT_DIRS: [&str; 2] = ["/usr/lib/sota/conf.d", "/etc/sota/conf.d"];

/// The type of a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Str,
    Int,
    Bool,
}

/// The keys aktualizr-rs knows: `section.key`, type, default (aktualizr's, where it applies).
/// Empty defaults of derived keys are filled in by [`Config::derive`].
const KEYS: &[(&str, Type, &str)] = &[
    ("logger.loglevel", Type::Int, "2"),
    ("tls.server", Type::Str, ""),
    ("tls.server_url_path", Type::Str, ""),
    ("tls.ca_source", Type::Str, "file"),
    ("tls.pkey_source", Type::Str, "file"),
    ("tls.cert_source", Type::Str, "file"),
    ("provision.server", Type::Str, ""),
    ("provision.p12_password", Type::Str, ""),
    ("provision.expiry_days", Type::Str, "36000"),
    ("provision.provision_path", Type::Str, ""),
    ("provision.mode", Type::Str, ""),
    ("provision.device_id", Type::Str, ""),
    ("provision.primary_ecu_serial", Type::Str, ""),
    ("provision.primary_ecu_hardware_id", Type::Str, ""),
    ("provision.ecu_registration_endpoint", Type::Str, ""),
    ("uptane.polling_sec", Type::Int, "10"),
    ("uptane.director_server", Type::Str, ""),
    ("uptane.repo_server", Type::Str, ""),
    ("uptane.key_source", Type::Str, "file"),
    // aktualizr's default is RSA2048; ring cannot generate RSA keys, and ed25519 is smaller
    // and faster (an imported RSA key still works).
    ("uptane.key_type", Type::Str, "ED25519"),
    ("uptane.force_install_completion", Type::Bool, "false"),
    ("uptane.secondary_config_file", Type::Str, ""),
    ("uptane.secondary_preinstall_wait_sec", Type::Int, "600"),
    ("pacman.type", Type::Str, "ostree"),
    ("pacman.os", Type::Str, ""),
    ("pacman.sysroot", Type::Str, ""),
    ("pacman.ostree_server", Type::Str, ""),
    ("pacman.packages_file", Type::Str, "/usr/package.manifest"),
    ("pacman.images_path", Type::Str, "/var/sota/images"),
    ("pacman.fake_need_reboot", Type::Bool, "false"),
    ("pacman.booted", Type::Str, "booted"),
    // aktualizr-rs's own: stage deployments on a booted system (finalized at shutdown by
    // ostree-finalize-staged.service) instead of writing them at once as aktualizr does.
    ("pacman.stage", Type::Bool, "false"),
    ("storage.type", Type::Str, "sqlite"),
    ("storage.path", Type::Str, "/var/sota"),
    ("storage.sqldb_path", Type::Str, "sql.db"),
    ("import.base_path", Type::Str, "/var/sota/import"),
    ("import.uptane_private_key_path", Type::Str, ""),
    ("import.uptane_public_key_path", Type::Str, ""),
    ("import.tls_cacert_path", Type::Str, ""),
    ("import.tls_pkey_path", Type::Str, ""),
    ("import.tls_clientcert_path", Type::Str, ""),
    ("telemetry.report_network", Type::Bool, "true"),
    ("telemetry.report_config", Type::Bool, "true"),
    ("bootloader.rollback_mode", Type::Str, "none"),
    (
        "bootloader.reboot_sentinel_dir",
        Type::Str,
        "/var/run/aktualizr-session",
    ),
    ("bootloader.reboot_sentinel_name", Type::Str, "need_reboot"),
    ("bootloader.reboot_command", Type::Str, "/sbin/reboot"),
    // aktualizr-rs's own: consent gates and windows (see consent.rs).
    ("consent.download_approval", Type::Bool, "false"),
    ("consent.install_approval", Type::Bool, "false"),
    ("consent.reboot_approval", Type::Bool, "false"),
    ("consent.download_window", Type::Str, ""),
    ("consent.install_window", Type::Str, ""),
    ("consent.reboot_window", Type::Str, ""),
];

fn known(key: &str) -> Option<(Type, &'static str)> {
    KEYS.iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, t, d)| (*t, *d))
}

/// A configuration error: which file, which line or key, what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct ConfigError {
    /// The file (or directory) at fault.
    pub file: PathBuf,
    /// What is wrong.
    pub message: String,
}

fn err(file: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_owned(),
        message: message.into(),
    }
}

/// One value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The value, quotes stripped.
    pub value: String,
    /// The file that set it last (None: a default or a derived value).
    pub source: Option<PathBuf>,
}

/// The merged configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    values: BTreeMap<String, Setting>,
    /// Unknown keys and other things worth a warning, with their files.
    pub warnings: Vec<String>,
    /// The files applied, in order.
    pub files: Vec<PathBuf>,
}

/// Parses one file's text (INI semantics as aktualizr's boost parser) into `section.key`
/// pairs, in order.
fn parse(file: &Path, text: &str) -> Result<Vec<(String, String, usize)>, ConfigError> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.strip_suffix(']').ok_or_else(|| {
                err(
                    file,
                    format!("line {n}: a section header needs a closing ']'"),
                )
            })?;
            section = name.trim().to_owned();
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| {
            err(
                file,
                format!("line {n}: expected `key = value`, found {line:?}"),
            )
        })?;
        let key = key.trim();
        if key.is_empty() {
            return Err(err(file, format!("line {n}: empty key")));
        }
        if section.is_empty() {
            return Err(err(
                file,
                format!("line {n}: key {key:?} outside any [section]"),
            ));
        }
        out.push((format!("{section}.{key}"), unquote(value.trim()), n));
    }
    Ok(out)
}

/// Strips one pair of surrounding double quotes, as aktualizr does (no escapes in between).
fn unquote(v: &str) -> String {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
        .to_owned()
}

fn check_type(t: Type, value: &str) -> Result<(), &'static str> {
    match t {
        Type::Str => Ok(()),
        Type::Int => value.parse::<i64>().map(|_| ()).map_err(|_| "an integer"),
        Type::Bool => match value {
            "true" | "false" => Ok(()),
            _ => Err("true or false"),
        },
    }
}

/// The `*.toml` files of `paths` (files as given, directories listed), merged by file name
/// (a later path's file replaces an earlier one of the same name), in name order.
fn files_of(paths: &[PathBuf], must_exist: bool) -> Result<Vec<PathBuf>, ConfigError> {
    let mut by_name: BTreeMap<std::ffi::OsString, PathBuf> = BTreeMap::new();
    for p in paths {
        if p.is_dir() {
            let entries =
                std::fs::read_dir(p).map_err(|e| err(p, format!("reading the directory: {e}")))?;
            for e in entries {
                let e = e.map_err(|e| err(p, format!("reading the directory: {e}")))?;
                let path = e.path();
                if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
                    by_name.insert(e.file_name(), path);
                }
            }
        } else if p.is_file() {
            if let Some(name) = p.file_name() {
                by_name.insert(name.to_owned(), p.clone());
            }
        } else if must_exist {
            return Err(err(p, "no such file or directory"));
        }
    }
    Ok(by_name.into_values().collect())
}

impl Config {
    /// Loads the configuration: the `-c` paths when given (each must exist), else
    /// [`DEFAULT_DIRS`] (missing ones skipped). Then derives the server URLs.
    pub fn load(paths: &[PathBuf]) -> Result<Config, ConfigError> {
        let (paths, must_exist) = if paths.is_empty() {
            (DEFAULT_DIRS.iter().map(PathBuf::from).collect(), false)
        } else {
            (paths.to_vec(), true)
        };
        let mut config = Config::default();
        for file in files_of(&paths, must_exist)? {
            let text = std::fs::read_to_string(&file).map_err(|e| err(&file, e.to_string()))?;
            config.apply(&file, &text)?;
        }
        config.derive();
        Ok(config)
    }

    /// Applies one file's settings over the current ones.
    pub fn apply(&mut self, file: &Path, text: &str) -> Result<(), ConfigError> {
        for (key, value, line) in parse(file, text)? {
            match known(&key) {
                Some((t, _)) => check_type(t, &value).map_err(|expected| {
                    err(
                        file,
                        format!("line {line}: {key} = {value:?}: expected {expected}"),
                    )
                })?,
                None => self.warnings.push(format!(
                    "{}: line {line}: unknown key {key} (kept, not used)",
                    file.display()
                )),
            }
            self.values.insert(
                key,
                Setting {
                    value,
                    source: Some(file.to_owned()),
                },
            );
        }
        self.files.push(file.to_owned());
        Ok(())
    }

    /// Fills in what aktualizr derives after loading: the server URLs from `tls.server`, the
    /// registration endpoint, the provisioning mode.
    pub fn derive(&mut self) {
        let server = self.str("tls.server").trim_end_matches('/').to_owned();
        if !server.is_empty() {
            self.set_default("provision.server", server.clone());
            self.set_default("uptane.repo_server", format!("{server}/repo"));
            self.set_default("uptane.director_server", format!("{server}/director"));
            self.set_default("pacman.ostree_server", format!("{server}/treehub"));
        }
        let director = self.str("uptane.director_server").to_owned();
        if !director.is_empty() {
            self.set_default(
                "provision.ecu_registration_endpoint",
                format!("{director}/ecus"),
            );
        }
        let mode = if self.str("provision.provision_path").is_empty() {
            "DeviceCred"
        } else {
            "SharedCred"
        };
        self.set_default("provision.mode", mode.to_owned());
    }

    /// Sets `[tls] server` (from a credentials archive, say) and derives the URLs again.
    pub fn set_server(&mut self, url: &str) {
        self.values.insert(
            "tls.server".to_owned(),
            Setting {
                value: url.to_owned(),
                source: None,
            },
        );
        self.derive();
    }

    /// Sets a derived value where the files left the key unset or empty.
    fn set_default(&mut self, key: &str, value: String) {
        if self.values.get(key).is_none_or(|s| s.value.is_empty()) && !value.is_empty() {
            self.values.insert(
                key.to_owned(),
                Setting {
                    value,
                    source: None,
                },
            );
        }
    }

    /// A value as text (its default when unset; "" for an unknown unset key).
    pub fn str(&self, key: &str) -> &str {
        match self.values.get(key) {
            Some(s) => &s.value,
            None => known(key).map_or("", |(_, d)| d),
        }
    }

    /// An integer value (checked at load time; the default if unset).
    pub fn int(&self, key: &str) -> i64 {
        self.str(key).parse().unwrap_or(0)
    }

    /// A boolean value (checked at load time; the default if unset).
    pub fn bool(&self, key: &str) -> bool {
        self.str(key) == "true"
    }

    /// A path under `[import] base_path` (absolute paths stay as they are); None when unset.
    pub fn import_path(&self, key: &str) -> Option<PathBuf> {
        let v = self.str(key);
        (!v.is_empty()).then(|| Path::new(self.str("import.base_path")).join(v))
    }

    /// The OSTree sysroot: `[pacman] sysroot`, `/` when empty (aktualizr's default sysroot).
    pub fn sysroot(&self) -> PathBuf {
        match self.str("pacman.sysroot") {
            "" => PathBuf::from("/"),
            s => PathBuf::from(s),
        }
    }

    /// The OS name, `[pacman] os`, None when empty (the booted deployment's).
    pub fn os(&self) -> Option<&str> {
        Some(self.str("pacman.os")).filter(|s| !s.is_empty())
    }

    /// The reboot sentinel path.
    pub fn reboot_sentinel(&self) -> PathBuf {
        Path::new(self.str("bootloader.reboot_sentinel_dir"))
            .join(self.str("bootloader.reboot_sentinel_name"))
    }

    /// Every known key with its effective value and source, then unknown keys that were set.
    pub fn effective(&self) -> Vec<(String, Setting)> {
        let mut out: Vec<(String, Setting)> = KEYS
            .iter()
            .map(|(k, _, d)| {
                let s = self.values.get(*k).cloned().unwrap_or(Setting {
                    value: (*d).to_owned(),
                    source: None,
                });
                ((*k).to_owned(), s)
            })
            .collect();
        for (k, s) in &self.values {
            if known(k).is_none() {
                out.push((k.clone(), s.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str, &str)]) -> Result<Config, ConfigError> {
        // (directory, file name, text)
        let tmp = tempfile::tempdir().unwrap();
        let mut dirs = Vec::new();
        for (dir, name, text) in files {
            let d = tmp.path().join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(name), text).unwrap();
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        Config::load(&dirs)
    }

    #[test]
    fn merges_like_aktualizr_by_name_then_in_name_order() {
        let c = load(&[
            (
                "usr",
                "10-base.toml",
                "[tls]\nserver = \"https://a.example\"\n[uptane]\npolling_sec = 20\n",
            ),
            (
                "usr",
                "20-os.toml",
                "[pacman]\nos = lmp\nsysroot = \"/sysroot\"\n",
            ),
            // Same name in a later directory: replaces the earlier file entirely.
            ("etc", "20-os.toml", "[pacman]\nos = other\n"),
            (
                "etc",
                "05-first.toml",
                "[uptane]\npolling_sec = 5\n[logger]\nloglevel = 1\n",
            ),
        ])
        .unwrap();
        // 05-first, 10-base, 20-os (etc's): the later file's key wins.
        assert_eq!(c.int("uptane.polling_sec"), 20);
        assert_eq!(c.int("logger.loglevel"), 1);
        assert_eq!(c.str("pacman.os"), "other");
        assert_eq!(
            c.str("pacman.sysroot"),
            "",
            "the replaced file's keys are gone"
        );
        assert_eq!(
            c.str("uptane.director_server"),
            "https://a.example/director"
        );
        assert_eq!(c.str("uptane.repo_server"), "https://a.example/repo");
        assert_eq!(c.str("pacman.ostree_server"), "https://a.example/treehub");
        assert_eq!(c.str("provision.server"), "https://a.example");
        assert_eq!(
            c.str("provision.ecu_registration_endpoint"),
            "https://a.example/director/ecus"
        );
        assert_eq!(c.str("provision.mode"), "DeviceCred");
        assert_eq!(
            c.str("uptane.key_type"),
            "ED25519",
            "ours (aktualizr's is RSA2048)"
        );
        assert_eq!(
            c.reboot_sentinel(),
            Path::new("/var/run/aktualizr-session/need_reboot")
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn explicit_urls_are_kept_and_import_paths_are_relative_to_base_path() {
        let c = load(&[(
            "d",
            "sota.toml",
            "[tls]\nserver = https://gw\n[uptane]\ndirector_server = https://dir\n\
             [import]\nbase_path = /var/sota/import\ntls_clientcert_path = client.pem\n\
             tls_pkey_path = /abs/pkey.pem\n[provision]\nprovision_path = /var/sota/credentials.zip\n",
        )])
        .unwrap();
        assert_eq!(c.str("uptane.director_server"), "https://dir");
        assert_eq!(
            c.str("provision.ecu_registration_endpoint"),
            "https://dir/ecus"
        );
        assert_eq!(
            c.import_path("import.tls_clientcert_path"),
            Some(PathBuf::from("/var/sota/import/client.pem"))
        );
        assert_eq!(
            c.import_path("import.tls_pkey_path"),
            Some(PathBuf::from("/abs/pkey.pem"))
        );
        assert_eq!(c.import_path("import.tls_cacert_path"), None);
        assert_eq!(c.str("provision.mode"), "SharedCred");
    }

    #[test]
    fn wrong_types_name_the_file_the_key_and_the_type() {
        let e = load(&[("d", "sota.toml", "[uptane]\npolling_sec = often\n")]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("sota.toml"), "{msg}");
        assert!(msg.contains("uptane.polling_sec"), "{msg}");
        assert!(msg.contains("expected an integer"), "{msg}");
        let e = load(&[("d", "b.toml", "[telemetry]\n\nreport_network = yes\n")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("line 3: telemetry.report_network = \"yes\": expected true or false"),
            "{e}"
        );
        let e = load(&[("d", "c.toml", "server = x\n")]).unwrap_err();
        assert!(e.to_string().contains("outside any [section]"), "{e}");
        let e = load(&[("d", "c.toml", "[tls\n")]).unwrap_err();
        assert!(e.to_string().contains("closing ']'"), "{e}");
    }

    #[test]
    fn unknown_keys_warn_and_missing_explicit_paths_fail() {
        let c = load(&[(
            "d",
            "sota.toml",
            "[pacman]\ntags = main\n[uptane]\npoling_sec = 3\n",
        )])
        .unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[1].contains("unknown key uptane.poling_sec"));
        assert_eq!(c.str("pacman.tags"), "main");
        let e = Config::load(&[PathBuf::from("/nonexistent/sota.toml")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent/sota.toml: no such file"),
            "{e}"
        );
    }

    #[test]
    fn a_file_given_with_c_joins_by_its_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("conf.d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.toml"), "[pacman]\nos = fromdir\n").unwrap();
        let file = tmp.path().join("z.toml");
        std::fs::write(&file, "[pacman]\nos = fromfile\n").unwrap();
        let c = Config::load(&[file.clone(), dir]).unwrap();
        assert_eq!(c.str("pacman.os"), "fromfile", "z.toml sorts after a.toml");
        assert_eq!(c.files.last(), Some(&file));
    }
}
