//! Where the store is and how to authenticate: endpoints, TLS (CA, client
//! certificate and key), etcd user and password. From flags, or from a
//! YAML file (`--store-config`) whose values the flags override:
//!
//! ```yaml
//! endpoints: [https://10.0.0.1:2379, https://10.0.0.2:2379]
//! ca: /etc/segment/etcd-ca.pem
//! cert: /etc/segment/host.pem
//! key: /etc/segment/host-key.pem
//! user: host-web-1            # etcd authentication (with RBAC, see README)
//! password_file: /etc/segment/etcd-password
//! prefix: /segment/v1/
//! ```

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use super::{StoreError, keys::DEFAULT_PREFIX};

/// The store flags shared by `publish`, `fleet` and `run --store`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreArgs {
    /// etcd endpoints, comma-separated: http://HOST:PORT or https://HOST:PORT.
    #[arg(long = "store", value_name = "URL[,URL...]")]
    pub store: Option<String>,
    /// CA certificate (PEM) that signed the store's server certificates.
    #[arg(long, value_name = "PEM")]
    pub store_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --store-key.
    #[arg(long, value_name = "PEM", requires = "store_key")]
    pub store_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "store_cert")]
    pub store_key: Option<PathBuf>,
    /// etcd user (authentication); the password comes from --store-password
    /// or the environment variable SEGMENT_STORE_PASSWORD.
    #[arg(long, value_name = "NAME")]
    pub store_user: Option<String>,
    #[arg(long, value_name = "PASSWORD")]
    pub store_password: Option<String>,
    /// A YAML file with `endpoints`, `ca`, `cert`, `key`, `user`,
    /// `password`/`password_file` and `prefix`; flags override it.
    #[arg(long, value_name = "FILE")]
    pub store_config: Option<PathBuf>,
    /// Key prefix of the fleet in the store.
    #[arg(long, value_name = "PREFIX")]
    pub store_prefix: Option<String>,
}

impl StoreArgs {
    pub fn given(&self) -> bool {
        self.store.is_some() || self.store_config.is_some()
    }

    pub fn config(&self) -> Result<StoreConfig, StoreError> {
        let mut cfg = match &self.store_config {
            Some(path) => StoreConfig::from_file(path)?,
            None => StoreConfig::default(),
        };
        if let Some(urls) = &self.store {
            cfg.endpoints = split_endpoints(urls);
        }
        if let Some(p) = &self.store_ca {
            cfg.ca = Some(p.clone());
        }
        if let Some(p) = &self.store_cert {
            cfg.cert = Some(p.clone());
        }
        if let Some(p) = &self.store_key {
            cfg.key = Some(p.clone());
        }
        if let Some(u) = &self.store_user {
            cfg.user = Some(u.clone());
        }
        if let Some(p) = &self.store_password {
            cfg.password = Some(p.clone());
        } else if let Ok(p) = std::env::var("SEGMENT_STORE_PASSWORD")
            && cfg.password.is_none()
        {
            cfg.password = Some(p);
        }
        if let Some(p) = &self.store_prefix {
            cfg.prefix = p.clone();
        }
        cfg.check()?;
        Ok(cfg)
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub endpoints: Vec<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub prefix: String,
    /// Deadline of one request (get, put, transaction).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            ca: None,
            cert: None,
            key: None,
            user: None,
            password: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    endpoints: Vec<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    prefix: Option<String>,
}

impl StoreConfig {
    /// One endpoint list, comma-separated.
    pub fn for_endpoints(urls: &str) -> Result<Self, StoreError> {
        let cfg = Self {
            endpoints: split_endpoints(urls),
            ..Self::default()
        };
        cfg.check()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self, StoreError> {
        let text = std::fs::read_to_string(path).map_err(|source| StoreError::ReadFile {
            what: "store configuration",
            path: path.to_owned(),
            source,
        })?;
        let f: FileConfig = serde_saphyr::from_str(&text).map_err(|e| StoreError::Config {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let password = match (f.password, f.password_file) {
            (Some(_), Some(_)) => {
                return Err(StoreError::Config {
                    path: path.to_owned(),
                    message: "give `password` or `password_file`, not both".into(),
                });
            }
            (Some(p), None) => Some(p),
            (None, Some(file)) => {
                let file = rel(file);
                let p = std::fs::read_to_string(&file).map_err(|source| StoreError::ReadFile {
                    what: "store password file",
                    path: file,
                    source,
                })?;
                Some(p.trim_end_matches(['\n', '\r']).to_owned())
            }
            (None, None) => None,
        };
        Ok(Self {
            endpoints: f.endpoints,
            ca: f.ca.map(rel),
            cert: f.cert.map(rel),
            key: f.key.map(rel),
            user: f.user,
            password,
            prefix: f.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned()),
            ..Self::default()
        })
    }

    /// Endpoints well-formed, TLS files paired, user and password together.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.endpoints.is_empty() {
            return Err(StoreError::NoEndpoints);
        }
        let tls = self.ca.is_some() || self.cert.is_some();
        for url in &self.endpoints {
            let bad = |reason| StoreError::BadEndpoint {
                url: url.clone(),
                reason,
            };
            let rest = if let Some(r) = url.strip_prefix("https://") {
                r
            } else if let Some(r) = url.strip_prefix("http://") {
                if tls {
                    return Err(bad("TLS options are given but this endpoint is http://"));
                }
                r
            } else {
                return Err(bad("it does not start with http:// or https://"));
            };
            let hostport = rest.trim_end_matches('/');
            if hostport.is_empty() || hostport.contains('/') {
                return Err(bad("it has no host or carries a path"));
            }
            let Some((_, port)) = hostport.rsplit_once(':') else {
                return Err(bad("it has no port"));
            };
            if port.parse::<u16>().is_err() {
                return Err(bad("its port is not a number from 1 to 65535"));
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(StoreError::Usage {
                message: "a client certificate needs its key, and a key its certificate (--store-cert with --store-key)".into(),
            });
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(StoreError::Usage {
                message: "an etcd user needs a password (--store-password or SEGMENT_STORE_PASSWORD), and a password a user".into(),
            });
        }
        Ok(())
    }

    pub fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }

    pub fn uses_tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }
}

fn split_endpoints(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        assert!(StoreConfig::for_endpoints("http://127.0.0.1:2379").is_ok());
        assert!(StoreConfig::for_endpoints("http://a:1,https://b:2").is_ok());
        for bad in [
            "",
            "127.0.0.1:2379",
            "http://host",
            "http://h:99999",
            "http://h:1/x",
        ] {
            assert!(StoreConfig::for_endpoints(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_config_file_with_relative_paths_and_a_password_file() {
        let dir = std::env::temp_dir().join(format!("segment-store-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
        std::fs::write(
            dir.join("store.yaml"),
            "endpoints: [https://10.0.0.1:2379]\nca: ca.pem\ncert: c.pem\nkey: k.pem\nuser: web-1\npassword_file: pw\n",
        )
        .unwrap();
        let args = StoreArgs {
            store_config: Some(dir.join("store.yaml")),
            ..StoreArgs::default()
        };
        let cfg = args.config().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(cfg.endpoints, ["https://10.0.0.1:2379"]);
        assert_eq!(cfg.ca, Some(dir.join("ca.pem")));
        assert_eq!(cfg.password.as_deref(), Some("s3cret"));
        assert_eq!(cfg.user.as_deref(), Some("web-1"));
    }
}
