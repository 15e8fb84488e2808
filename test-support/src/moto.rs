//! moto on loopback, a process of its own per test: the customer's AWS account in tests.

use std::path::PathBuf;
use std::time::Duration;

/// Where `scripts/lib.sh`'s `ensure_moto` installs moto (or `QLEET_MOTO_SERVER`).
pub fn moto_server() -> PathBuf {
    if let Some(p) = std::env::var_os("QLEET_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/moto-venv/bin/moto_server")
}

/// A moto server of its own, killed when dropped.
pub struct MotoServer {
    pub url: String,
    _child: tokio::process::Child,
}

impl MotoServer {
    /// Moto as usual: everything allowed.
    pub async fn start() -> MotoServer {
        MotoServer::spawn(None).await
    }

    /// Moto evaluating IAM policies after the first `no_auth_calls` calls (or, with `None`,
    /// allowing everything).
    pub async fn spawn(no_auth_calls: Option<u32>) -> MotoServer {
        MotoServer::spawn_on("127.0.0.1", no_auth_calls).await
    }

    /// Like [`MotoServer::spawn`], listening on `host` (an address of this machine's).
    pub async fn spawn_on(host: &str, no_auth_calls: Option<u32>) -> MotoServer {
        let bin = moto_server();
        assert!(
            bin.exists(),
            "moto is missing at {}: run scripts/test.sh once (or `source scripts/lib.sh && ensure_moto`)",
            bin.display()
        );
        let port = crate::free_port();
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(["-H", host, "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(n) = no_auth_calls {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let child = cmd.spawn().expect("start moto_server");
        let url = format!("http://{host}:{port}");
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if http
                .get(format!("{url}/moto-api/data.json"))
                .send()
                .await
                .is_ok()
            {
                return MotoServer { url, _child: child };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto_server did not answer on {url}");
    }

    /// The S3 buckets moto holds, by name (S3's `ListBuckets` over plain HTTP: moto does not
    /// check signatures unless told to).
    pub async fn bucket_names(&self) -> Vec<String> {
        let xml = reqwest::get(format!("{}/", self.url))
            .await
            .expect("moto ListBuckets")
            .text()
            .await
            .expect("ListBuckets body");
        xml.split("<Name>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Name>").map(|(name, _)| name.to_owned()))
            .collect()
    }

    /// Deletes an (empty) bucket behind everyone's back.
    pub async fn delete_bucket(&self, name: &str) {
        let resp = reqwest::Client::new()
            .delete(format!("{}/{name}", self.url))
            .send()
            .await
            .expect("moto DeleteBucket");
        assert!(
            resp.status().is_success(),
            "DeleteBucket {name}: {}",
            resp.status()
        );
    }
}
