//! A loopback TCP proxy a test can cut and restore: put it between a server and its PostgreSQL
//! to make the database unreachable (every open connection closed, every new one closed at once)
//! exactly when the test says, then reachable again.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy to one target address; stopped when dropped.
pub struct TcpProxy {
    pub addr: SocketAddr,
    /// `true` while connections are passed through.
    open: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and passes every connection through to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let open = Arc::new(watch::channel(true).0);
        let task = tokio::spawn(accept(listener, target, open.clone()));
        TcpProxy { addr, open, task }
    }

    /// A proxy to the server of the `postgres://` URL `database_url`.
    pub async fn in_front_of(database_url: &str) -> TcpProxy {
        let url = url::Url::parse(database_url).expect("database url");
        let host = url.host_str().expect("host").to_owned();
        let target = tokio::net::lookup_host((host.as_str(), url.port().unwrap_or(5432)))
            .await
            .expect("resolve the database server")
            .next()
            .expect("an address");
        TcpProxy::start(target).await
    }

    /// Closes every open connection and closes new ones at once until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Passes connections through again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }

    /// `url` (a `postgres://` URL) with its host and port replaced by this proxy's.
    pub fn database_url(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).expect("database url");
        url.set_host(Some(&self.addr.ip().to_string()))
            .expect("host");
        url.set_port(Some(self.addr.port())).expect("port");
        url.to_string()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, open: Arc<watch::Sender<bool>>) {
    while let Ok((client, _)) = listener.accept().await {
        if !*open.borrow() {
            drop(client);
            continue;
        }
        let mut cut = open.subscribe();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                // Both ends closed, as when the server goes away.
                _ = cut.wait_for(|open| !open) => {}
            }
        });
    }
}
