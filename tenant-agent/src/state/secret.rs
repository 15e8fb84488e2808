//! The agent's identity in a Kubernetes Secret (`--state-secret NAMESPACE/NAME`): the state
//! file's fields, one data key each, so an agent in a pod keeps its identity when the pod is
//! rescheduled. The agent creates the Secret after registering; a Secret that exists with no
//! data at all (a placeholder made beforehand) is filled in with an update instead.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::{State, StateError};

/// The data keys of the Secret.
pub const URL_KEY: &str = "url";
pub const AGENT_ID_KEY: &str = "agentId";
pub const CONTROL_PLANE_KEY: &str = "controlPlane";
pub const CREDENTIAL_KEY: &str = "credential";
/// The label the agent puts on the Secret it creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "qleet-agent");

/// A client for the API server that holds the state Secret: the pod's own (in-cluster service
/// account) when the agent runs in one, else the current context of `kubeconfig`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, StateError> {
    let unreadable = |reason: String| StateError::Unreadable {
        what: "--state-secret".into(),
        reason,
    };
    let config = match (kube::Config::incluster(), kubeconfig) {
        (Ok(c), _) => c,
        (Err(_), Some(path)) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| unreadable(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| unreadable(format!("{}: {e}", path.display())))?
        }
        (Err(e), None) => {
            return Err(unreadable(format!(
                "not running in a pod ({e}) and no --kubeconfig (KUBECONFIG) to reach the Secret with"
            )));
        }
    };
    kube::Client::try_from(config).map_err(|e| unreadable(e.to_string()))
}

/// One Secret holding the identity.
#[derive(Clone)]
pub struct SecretStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

impl SecretStore {
    /// The Secret `namespace/name` on the API server `client` talks to.
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> SecretStore {
        SecretStore {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    fn shown(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.name)
    }

    fn unreadable(&self, action: &str, e: kube::Error) -> StateError {
        let reason = match e {
            kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
            other => crate::client::error_chain(&other),
        };
        StateError::Unreadable {
            what: self.shown(),
            reason: format!("cannot {action} it: {reason}"),
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> StateError {
        StateError::Invalid {
            path: self.shown(),
            reason: reason.into(),
        }
    }

    /// Reads the identity; `None` when the Secret does not exist or has no data yet.
    pub async fn load(&self) -> Result<Option<State>, StateError> {
        let Some(secret) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.unreadable("read", e))?
        else {
            return Ok(None);
        };
        let data = secret.data.unwrap_or_default();
        if data.is_empty() {
            return Ok(None);
        }
        let text = |key: &str| -> Result<String, StateError> {
            let bytes = data
                .get(key)
                .ok_or_else(|| self.invalid(format!("no `{key}` key")))?;
            String::from_utf8(bytes.0.clone())
                .map_err(|_| self.invalid(format!("`{key}` is not UTF-8")))
        };
        let agent_id = text(AGENT_ID_KEY)?;
        let agent_id = Uuid::parse_str(agent_id.trim())
            .map_err(|_| self.invalid(format!("`{AGENT_ID_KEY}` is not an agent id")))?;
        let control_plane =
            match data.get(CONTROL_PLANE_KEY) {
                None => None,
                Some(_) => Some(Uuid::parse_str(text(CONTROL_PLANE_KEY)?.trim()).map_err(
                    |_| self.invalid(format!("`{CONTROL_PLANE_KEY}` is not a control plane id")),
                )?),
            };
        let credential = text(CREDENTIAL_KEY)?;
        if !credential.starts_with(qleet_protocol::CREDENTIAL_PREFIX) {
            return Err(self.invalid(format!("`{CREDENTIAL_KEY}` is not an agent credential")));
        }
        Ok(Some(State {
            url: text(URL_KEY)?,
            agent_id,
            control_plane,
            credential: SecretString::from(credential),
        }))
    }

    /// The Secret as the agent writes it.
    fn body(&self, state: &State) -> Secret {
        let mut data = BTreeMap::from([
            (
                URL_KEY.to_owned(),
                ByteString(state.url.clone().into_bytes()),
            ),
            (
                AGENT_ID_KEY.to_owned(),
                ByteString(state.agent_id.to_string().into_bytes()),
            ),
            (
                CREDENTIAL_KEY.to_owned(),
                ByteString(state.credential.expose_secret().as_bytes().to_vec()),
            ),
        ]);
        if let Some(cp) = state.control_plane {
            data.insert(
                CONTROL_PLANE_KEY.to_owned(),
                ByteString(cp.to_string().into_bytes()),
            );
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.0.to_owned(),
                    MANAGED_BY.1.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// Creates the Secret with the identity, or fills in an existing one that has no data. A
    /// Secret that already holds data is never overwritten.
    pub async fn save(&self, state: &State) -> Result<(), StateError> {
        let created = self
            .api
            .create(&PostParams::default(), &self.body(state))
            .await;
        match created {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(self.unreadable("create", e)),
        }
        let current = self
            .api
            .get(&self.name)
            .await
            .map_err(|e| self.unreadable("read", e))?;
        if current.data.as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(self.invalid(
                "it already holds an identity written by someone else meanwhile; not overwritten",
            ));
        }
        // Keep what the placeholder carries (its resource version makes a concurrent writer
        // win rather than be overwritten; its labels and annotations may be a Helm release's).
        let mut body = current;
        body.data = self.body(state).data;
        body.type_.get_or_insert_with(|| "Opaque".to_owned());
        body.metadata
            .labels
            .get_or_insert_default()
            .entry(MANAGED_BY.0.to_owned())
            .or_insert_with(|| MANAGED_BY.1.to_owned());
        self.api
            .replace(&self.name, &PostParams::default(), &body)
            .await
            .map_err(|e| self.unreadable("update", e))?;
        Ok(())
    }
}
