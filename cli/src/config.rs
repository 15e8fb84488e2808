//! What `qleetctl` remembers between runs: the server, the API token and the current context
//! (organisation + control plane), in `$QLEET_CONFIG_DIR`, else `$XDG_CONFIG_HOME/qleet`, else
//! `~/.config/qleet` — one JSON file, written with mode 0600 because it holds a token.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Failure, Result};

/// The stored credentials and context.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stored {
    /// Qleet's URL, e.g. `https://qleet.example`.
    pub url: Option<String>,
    /// The API token (`qleet_...`).
    pub token: Option<String>,
    /// The current organisation's slug.
    pub org: Option<String>,
    /// The current control plane (its id).
    pub control_plane: Option<String>,
    /// The current control plane's name, for display.
    pub control_plane_name: Option<String>,
}

/// The directory the config file lives in.
pub fn dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("QLEET_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("qleet"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("qleet")),
        None => Err(Failure::usage(
            "cannot find a config directory: set QLEET_CONFIG_DIR or HOME",
        )),
    }
}

pub fn path() -> Result<PathBuf> {
    Ok(dir()?.join("config.json"))
}

/// The stored config; empty when there is none yet.
pub fn load() -> Result<Stored> {
    let path = path()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            Failure::failed(format!(
                "{} is not a valid qleetctl config ({e}); delete it or run `qleetctl logout`",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stored::default()),
        Err(e) => Err(Failure::failed(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Writes the config readable by its owner only (created 0600, and tightened if it existed).
pub fn save(stored: &Stored) -> Result<()> {
    let path = path()?;
    let dir = dir()?;
    let fail = |e: std::io::Error| Failure::failed(format!("cannot write {}: {e}", path.display()));
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let text = serde_json::to_string_pretty(stored).map_err(|e| Failure::failed(e.to_string()))?;
    let tmp = dir.join(".config.json.tmp");
    {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(fail)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(fail)?;
        }
        file.write_all(text.as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, &path).map_err(fail)
}

/// Removes the stored config (signed out); fine if there was none.
pub fn remove() -> Result<bool> {
    let path = path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Failure::failed(format!(
            "cannot remove {}: {e}",
            path.display()
        ))),
    }
}
