//! The `DATABASE_URL` check both servers make at start.

use secrecy::SecretString;
use url::Url;

/// `url` as a secret when it is a `postgres://` (or `postgresql://`) URL; else a one-line reason.
pub fn parse(url: &str) -> Result<SecretString, String> {
    let parsed = Url::parse(url).map_err(|e| format!("DATABASE_URL is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "DATABASE_URL must start with postgres:// (got {}://)",
            parsed.scheme()
        ));
    }
    Ok(SecretString::from(url.to_owned()))
}
