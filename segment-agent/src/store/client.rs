//! The store's operations over an etcd v3 client.
//!
//! Every unary request has a deadline of its own (the client's per-request
//! timeout is not used: it would also cut long-lived watch streams).

use std::{collections::BTreeMap, future::Future, time::Duration};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
};

use super::{
    StoreConfig, StoreError,
    keys::{KeyKind, Keys, check_host_name},
    records::{Enrollment, HostStatus, PolicyDocument, Stored, decode, encode},
    watch::FleetView,
};

/// A connection to the store.
#[derive(Clone)]
pub struct Store {
    client: Client,
    keys: Keys,
    endpoints: String,
    timeout: Duration,
}

/// Everything under the prefix at one revision (for `fleet status`).
#[derive(Debug, Clone, Default)]
pub struct FleetRecords {
    pub view: FleetView,
    pub statuses: BTreeMap<String, Stored<HostStatus>>,
    /// Records that could not be decoded: (key, error).
    pub invalid: Vec<(String, String)>,
}

impl Store {
    /// Connects (lazily: an unreachable store shows at the first request).
    pub async fn connect(cfg: &StoreConfig) -> Result<Self, StoreError> {
        cfg.check()?;
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(cfg.connect_timeout)
            // HTTP/2 pings find a dead connection; etcd refuses pings more
            // often than every 5 s.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // A member cut off from its leader cancels our watch instead of
            // leaving it silent.
            .with_require_leader(true);
        if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
            opts = opts
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if cfg.uses_tls() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?));
            }
            if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
                tls = tls.identity(Identity::from_pem(
                    read(cert, "client certificate")?,
                    read(key, "client key")?,
                ));
            }
            opts = opts.with_tls(tls);
        }
        let endpoints = cfg.endpoints_text();
        let connect = Client::connect(cfg.endpoints.clone(), Some(opts));
        let client = match tokio::time::timeout(cfg.connect_timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(source)) => return Err(StoreError::Unreachable { endpoints, source }),
            Err(_) => {
                return Err(StoreError::Timeout {
                    endpoints,
                    op: "connect",
                    secs: cfg.connect_timeout.as_secs(),
                });
            }
        };
        Ok(Self {
            client,
            keys: Keys::new(&cfg.prefix),
            endpoints,
            timeout: cfg.request_timeout,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// The underlying client (watches and leases use it directly).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs one request under the store's deadline.
    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) if super::is_unavailable(&source) => Err(StoreError::Unreachable {
                endpoints: self.endpoints.clone(),
                source,
            }),
            Ok(Err(source)) => Err(StoreError::Request { op, source }),
            Err(_) => Err(StoreError::Timeout {
                endpoints: self.endpoints.clone(),
                op,
                secs: self.timeout.as_secs(),
            }),
        }
    }

    /// The current policy document and its revision, if one was published.
    pub async fn policy(&self) -> Result<Option<Stored<PolicyDocument>>, StoreError> {
        let key = self.keys.policy();
        let mut c = self.client.clone();
        let resp = self.call("get policy", c.get(key.clone(), None)).await?;
        match resp.kvs().first() {
            Some(kv) => Ok(Some(Stored {
                value: decode(kv.key(), kv.value())?,
                mod_revision: kv.mod_revision(),
            })),
            None => Ok(None),
        }
    }

    /// Writes the document in one transaction. With `if_revision = Some(n)`,
    /// only if the policy was not published after revision `n` (0: only if
    /// none was ever published). Returns the store revision of the write.
    pub async fn publish(
        &self,
        doc: &PolicyDocument,
        if_revision: Option<i64>,
    ) -> Result<i64, StoreError> {
        let key = self.keys.policy();
        let mut txn = Txn::new();
        if let Some(n) = if_revision {
            // mod_revision ≤ n, i.e. < n + 1 (an absent key has 0).
            txn = txn.when([Compare::mod_revision(
                key.clone(),
                CompareOp::Less,
                n.saturating_add(1),
            )]);
        }
        let txn = txn
            .and_then([TxnOp::put(key.clone(), encode(doc), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let mut c = self.client.clone();
        let resp = self.call("publish", c.txn(txn)).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if resp.succeeded() {
            return Ok(revision);
        }
        let current = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            })
            .unwrap_or_default();
        Err(StoreError::Conflict {
            expected: if_revision.unwrap_or_default(),
            current,
        })
    }

    /// Creates or replaces this host's enrollment; returns the revision.
    pub async fn enroll(&self, e: &Enrollment) -> Result<i64, StoreError> {
        check_host_name(&e.name).map_err(|reason| StoreError::BadHostName {
            name: e.name.clone(),
            reason,
        })?;
        let mut c = self.client.clone();
        let resp = self
            .call("enroll", c.put(self.keys.host(&e.name), encode(e), None))
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// This host's enrollment as stored, if any.
    pub async fn enrollment(&self, name: &str) -> Result<Option<Stored<Enrollment>>, StoreError> {
        let mut c = self.client.clone();
        let resp = self
            .call("get enrollment", c.get(self.keys.host(name), None))
            .await?;
        match resp.kvs().first() {
            Some(kv) => Ok(Some(Stored {
                value: decode(kv.key(), kv.value())?,
                mod_revision: kv.mod_revision(),
            })),
            None => Ok(None),
        }
    }

    /// Retires a host: its enrollment and its status, in one transaction.
    /// Returns whether an enrollment existed.
    pub async fn remove_host(&self, name: &str) -> Result<(bool, i64), StoreError> {
        check_host_name(name).map_err(|reason| StoreError::BadHostName {
            name: name.to_owned(),
            reason,
        })?;
        let txn = Txn::new().and_then([
            TxnOp::delete(self.keys.host(name), None::<DeleteOptions>),
            TxnOp::delete(self.keys.status(name), None::<DeleteOptions>),
        ]);
        let mut c = self.client.clone();
        let resp = self.call("remove host", c.txn(txn)).await?;
        // The first delete says whether the host was enrolled.
        let enrolled = matches!(
            resp.op_responses().first(),
            Some(TxnOpResponse::Delete(d)) if d.deleted() > 0
        );
        Ok((
            enrolled,
            resp.header().map(|h| h.revision()).unwrap_or_default(),
        ))
    }

    /// Writes a status record on a lease.
    pub async fn put_status(&self, status: &HostStatus, lease: i64) -> Result<i64, StoreError> {
        let mut c = self.client.clone();
        let resp = self
            .call(
                "put status",
                c.put(
                    self.keys.status(&status.name),
                    encode(status),
                    Some(PutOptions::new().with_lease(lease)),
                ),
            )
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub async fn grant_lease(&self, ttl: i64) -> Result<i64, StoreError> {
        let mut c = self.client.clone();
        let resp = self.call("grant lease", c.lease_grant(ttl, None)).await?;
        Ok(resp.id())
    }

    /// Reads the agent range (policy and enrollments) at one revision.
    pub async fn read_view(&self) -> Result<FleetView, StoreError> {
        let (start, end) = self.keys.agent_range();
        let mut c = self.client.clone();
        let resp = self
            .call(
                "read policy and enrollments",
                c.get(start, Some(GetOptions::new().with_range(end))),
            )
            .await?;
        let mut view = FleetView {
            revision: resp.header().map(|h| h.revision()).unwrap_or_default(),
            ..FleetView::default()
        };
        for kv in resp.kvs() {
            view.put(&self.keys, kv.key(), kv.value(), kv.mod_revision());
        }
        // The enrollments are those of the read's revision (a host deleted
        // since the highest revision among them is not in them).
        view.hosts_revision = view.revision;
        Ok(view)
    }

    /// Everything under the prefix at one revision, status records included.
    pub async fn read_all(&self) -> Result<FleetRecords, StoreError> {
        let mut c = self.client.clone();
        let resp = self
            .call(
                "read the fleet",
                c.get(
                    self.keys.prefix().to_owned(),
                    Some(GetOptions::new().with_prefix()),
                ),
            )
            .await?;
        let mut out = FleetRecords {
            view: FleetView {
                revision: resp.header().map(|h| h.revision()).unwrap_or_default(),
                ..FleetView::default()
            },
            ..FleetRecords::default()
        };
        for kv in resp.kvs() {
            match self.keys.classify(kv.key()) {
                KeyKind::Status(name) => match decode::<HostStatus>(kv.key(), kv.value()) {
                    Ok(value) => {
                        out.statuses.insert(
                            name,
                            Stored {
                                value,
                                mod_revision: kv.mod_revision(),
                            },
                        );
                    }
                    Err(e) => out.invalid.push((
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        error_chain(&e),
                    )),
                },
                _ => out
                    .view
                    .put(&self.keys, kv.key(), kv.value(), kv.mod_revision()),
            }
        }
        out.view.hosts_revision = out.view.revision;
        out.invalid
            .extend(out.view.invalid.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(out)
    }

    /// Compacts the store's history up to `revision` (tests and operators).
    pub async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        self.call(
            "compact",
            c.compact(
                revision,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            ),
        )
        .await?;
        Ok(())
    }
}

fn read(path: &std::path::Path, what: &'static str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
