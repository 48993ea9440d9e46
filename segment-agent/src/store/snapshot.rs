//! The last view an agent applied, saved in its state directory after each
//! successful switch, so that an agent started while the store is down
//! enforces exactly what it enforced before (and resumes its watch from
//! that revision when the store is back).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    StoreError,
    records::{Enrollment, PolicyDocument, Stored},
    watch::FleetView,
};

pub const FILE_NAME: &str = "fleet-applied.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedSnapshot {
    /// The store revision of the view.
    pub revision: i64,
    pub policy: Stored<PolicyDocument>,
    pub hosts: Vec<Stored<Enrollment>>,
    /// Unix seconds.
    pub saved_at: u64,
}

impl AppliedSnapshot {
    /// None when the view has no policy (nothing to enforce).
    pub fn from_view(view: &FleetView) -> Option<Self> {
        Some(Self {
            revision: view.revision,
            policy: view.policy.clone()?,
            hosts: view.hosts.values().map(|h| (**h).clone()).collect(),
            saved_at: crate::datapath::state::unix_now(),
        })
    }

    pub fn view(&self) -> FleetView {
        FleetView {
            revision: self.revision,
            policy: Some(self.policy.clone()),
            hosts: std::sync::Arc::new(
                self.hosts
                    .iter()
                    .map(|h| (h.value.name.as_str().into(), std::sync::Arc::new(h.clone())))
                    .collect(),
            ),
            // The enrollments as of the view's revision.
            hosts_revision: self.revision,
            ..FleetView::default()
        }
    }

    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// Atomic (write to a temporary file, rename).
    pub fn save(&self, state_dir: &Path) -> Result<(), StoreError> {
        let path = Self::path(state_dir);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| StoreError::Persist {
            path: path.clone(),
            source: e.into(),
        })?;
        crate::datapath::state::write_atomic(&path, &bytes)
            .map_err(|source| StoreError::Persist { path, source })
    }

    /// None when no snapshot was ever saved.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, StoreError> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StoreError::BadRecord {
                        key: path.display().to_string(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::ReadFile {
                what: "saved fleet snapshot",
                path,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips_through_the_state_dir() {
        let dir = std::env::temp_dir().join(format!("segment-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(AppliedSnapshot::load(&dir).unwrap(), None);
        let mut view = FleetView {
            revision: 42,
            policy: Some(Stored {
                value: PolicyDocument::new("p.yaml", "acls: []\n"),
                mod_revision: 40,
            }),
            ..FleetView::default()
        };
        std::sync::Arc::make_mut(&mut view.hosts).insert(
            "a".into(),
            std::sync::Arc::new(Stored {
                value: Enrollment {
                    name: "a".into(),
                    addresses: vec!["10.0.0.1".parse().unwrap()],
                    tags: vec!["tag:web".into()],
                    enrolled_at: 1,
                    refreshed_at: 1,
                    expires_after_secs: 10,
                },
                mod_revision: 41,
            }),
        );
        let snap = AppliedSnapshot::from_view(&view).unwrap();
        snap.save(&dir).unwrap();
        let back = AppliedSnapshot::load(&dir).unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back, snap);
        let v = back.view();
        assert_eq!(v.revision, 42);
        assert_eq!(v.hosts["a"].mod_revision, 41);
        assert_eq!(v.hosts_revision, 42, "the enrollments as of the view");
    }
}
