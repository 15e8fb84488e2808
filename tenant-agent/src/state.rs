//! The agent's identity: `{url, agentId, controlPlane, credential}` in a file only its owner
//! may read, or in a Kubernetes Secret ([`secret`]).

pub mod secret;

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What registration gave the agent.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub url: String,
    pub agent_id: Uuid,
    pub control_plane: Option<Uuid>,
    #[serde(with = "secret_string")]
    pub credential: SecretString,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("url", &self.url)
            .field("agent_id", &self.agent_id)
            .field("credential", &"[redacted]")
            .finish()
    }
}

mod secret_string {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose_secret())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<SecretString, D::Error> {
        Ok(SecretString::from(String::deserialize(de)?))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is readable by others (mode {mode:o}); run `chmod 600 {path}` or register again"
    )]
    TooOpen { path: String, mode: u32 },
    #[error("{path}: not an agent state file: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{what}: {reason}")]
    Unreadable { what: String, reason: String },
}

/// Where the identity is read from and saved to.
#[derive(Clone)]
pub enum Store {
    File(PathBuf),
    Secret(Box<secret::SecretStore>),
}

impl Store {
    /// The Secret `namespace/name`, through `client`.
    pub fn secret(client: kube::Client, namespace: &str, name: &str) -> Store {
        Store::Secret(Box::new(secret::SecretStore::new(client, namespace, name)))
    }

    /// The saved identity; `None` before the first registration.
    pub async fn load(&self) -> Result<Option<State>, StateError> {
        match self {
            Store::File(path) => load(path),
            Store::Secret(s) => s.load().await,
        }
    }

    /// Keeps what registration gave the agent.
    pub async fn save(&self, state: &State) -> Result<(), StateError> {
        match self {
            Store::File(path) => save(path, state),
            Store::Secret(s) => s.save(state).await,
        }
    }
}

/// Reads the state file; `None` when there is none yet. Refuses a file that group or others
/// may read, since it holds the credential.
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    let shown = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: shown,
                source,
            });
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StateError::TooOpen { path: shown, mode });
    }
    let text = std::fs::read_to_string(path).map_err(|source| StateError::Io {
        path: shown.clone(),
        source,
    })?;
    let state: State = serde_json::from_str(&text).map_err(|e| StateError::Invalid {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    if !state
        .credential
        .expose_secret()
        .starts_with(qleet_protocol::CREDENTIAL_PREFIX)
    {
        return Err(StateError::Invalid {
            path: shown,
            reason: "the credential is not an agent credential".into(),
        });
    }
    Ok(Some(state))
}

/// Writes the state file with mode 0600: to a new temporary file beside it, then renamed over,
/// so a crash never leaves half a file.
pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let shown = path.display().to_string();
    let io = |source| StateError::Io {
        path: shown.clone(),
        source,
    };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let text = serde_json::to_vec_pretty(state).map_err(|e| StateError::Invalid {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(&text).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            url: "https://qleet.example/cp/x".into(),
            agent_id: Uuid::new_v4(),
            control_plane: None,
            credential: SecretString::from("qleet_agent_abc_def"),
        }
    }

    #[test]
    fn the_state_file_is_written_owner_only_and_read_back() {
        let dir = std::env::temp_dir().join(format!("qleet-agent-state-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("state.json");
        assert!(load(&path).expect("no file yet").is_none());
        let s = state();
        save(&path, &s).expect("save");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = load(&path).expect("load").expect("some");
        assert_eq!(back.agent_id, s.agent_id);
        assert!(!format!("{back:?}").contains("qleet_agent_abc"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load(&path).expect_err("too open").to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
