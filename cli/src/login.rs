//! `qleetctl login` through the browser: listen on `127.0.0.1:0`, open
//! `{url}/auth/cli?port=P&state=S`, and wait for Qleet to redirect the browser back to
//! `http://127.0.0.1:P/callback?state=S&org=SLUG&token=...` after the management plane's own
//! OpenID Connect sign-in. A callback with another `state` is refused and ignored.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::error::{Failure, Result};

/// What the browser handed back.
pub struct Granted {
    pub token: String,
    pub org: String,
}

/// A random state: 32 bytes from the OS, hex.
fn random_state() -> Result<String> {
    let mut bytes = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom")
        .map_err(|e| Failure::failed(format!("no randomness for the sign-in state: {e}")))?;
    std::io::Read::read_exact(&mut f, &mut bytes)
        .map_err(|e| Failure::failed(format!("no randomness for the sign-in state: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs the browser sign-in; gives up after `timeout`.
pub async fn browser(
    url: &str,
    org: Option<&str>,
    open: bool,
    timeout: Duration,
) -> Result<Granted> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Failure::failed(format!("cannot listen on 127.0.0.1 for the sign-in: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Failure::failed(e.to_string()))?
        .port();
    let state = random_state()?;
    let mut target = format!("{url}/auth/cli?port={port}&state={state}");
    if let Some(org) = org {
        let org: String = url::form_urlencoded::byte_serialize(org.as_bytes()).collect();
        target.push_str(&format!("&org={org}"));
    }
    eprintln!("Open this page to sign in (waiting for the browser):\n{target}");
    if open {
        open_browser(&target);
    }
    let wait = async {
        loop {
            let (mut stream, _) = listener
                .accept()
                .await
                .map_err(|e| Failure::failed(format!("sign-in listener: {e}")))?;
            let mut buf = vec![0u8; 8192];
            let n = match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => continue,
            };
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = head
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("GET "))
                .and_then(|l| l.split(' ').next())
                .unwrap_or("");
            let granted = parse_callback(path, &state);
            let (status, page) = match &granted {
                Some(_) => (
                    "200 OK",
                    "Signed in. You can close this tab and return to qleetctl.",
                ),
                None => (
                    "400 Bad Request",
                    "This is not the sign-in qleetctl is waiting for.",
                ),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n\
                 content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
            if let Some(g) = granted {
                return Ok(g);
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.map_err(|_| {
        Failure::failed(format!(
            "the browser sign-in did not finish within {} s; run `qleetctl login` again",
            timeout.as_secs()
        ))
    })?
}

/// The token and organisation from `/callback?...`, if `state` matches.
fn parse_callback(path: &str, state: &str) -> Option<Granted> {
    let query = path.strip_prefix("/callback?")?;
    let mut got_state = None;
    let mut token = None;
    let mut org = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "state" => got_state = Some(v.into_owned()),
            "token" => token = Some(v.into_owned()),
            "org" => org = Some(v.into_owned()),
            _ => {}
        }
    }
    if got_state.as_deref() != Some(state) {
        return None;
    }
    Some(Granted {
        token: token.filter(|t| !t.is_empty())?,
        org: org.filter(|o| !o.is_empty())?,
    })
}

/// Best effort: `$BROWSER`, else the platform's opener. The URL is printed either way.
fn open_browser(target: &str) {
    let opener = std::env::var("BROWSER").ok().filter(|b| !b.is_empty());
    let program = opener.as_deref().unwrap_or(if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    });
    let _ = std::process::Command::new(program)
        .arg(target)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_counts_only_with_the_right_state() {
        let g = parse_callback("/callback?state=abc&org=acme&token=qleet_x", "abc").expect("ok");
        assert_eq!((g.token.as_str(), g.org.as_str()), ("qleet_x", "acme"));
        assert!(parse_callback("/callback?state=abd&org=acme&token=qleet_x", "abc").is_none());
        assert!(parse_callback("/callback?org=acme&token=qleet_x", "abc").is_none());
        assert!(parse_callback("/favicon.ico", "abc").is_none());
    }
}
