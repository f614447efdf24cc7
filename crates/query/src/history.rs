//! Earlier versions of a resource, from the snapshots the lake keeps.
//!
//! Each snapshot holds one version of each resource: the one current when it was published.
//! A delta run writes anew only the files it touches, so an earlier version of a resource lives
//! in a file of an earlier snapshot that the current snapshot no longer uses.
//! [`Lookup`] walks back from the snapshot being served through the snapshots it was
//! built on (each manifest names its parent) and looks the id up only in files not looked at
//! yet: the served snapshot's files, and files shared between older snapshots, are read at
//! most once. How far back it reaches is the lake's retention (`fhirlake snapshots --keep N`).

use std::collections::HashSet;
use std::path::PathBuf;

use mapper::lake::Lake;

use crate::snapshot::{OpenOptions, Snapshot};
use crate::QueryError;

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// `meta.versionId` (empty when the resource carries none).
    pub version_id: String,
    /// `meta.lastUpdated`, when present.
    pub last_updated: Option<String>,
    /// The resource's JSON as stored.
    pub resource: String,
}

impl Version {
    /// A stored resource with its version and time read out of it.
    pub fn of(resource: String) -> Self {
        let (version_id, last_updated) = meta_version(&resource);
        Self {
            version_id,
            last_updated,
            resource,
        }
    }
}

/// `meta.versionId` (empty when absent) and `meta.lastUpdated` of a stored resource.
pub fn meta_version(resource: &str) -> (String, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Doc {
        meta: Option<Meta>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "versionId")]
        version_id: Option<String>,
        #[serde(rename = "lastUpdated")]
        last_updated: Option<String>,
    }
    serde_json::from_str::<Doc>(resource)
        .ok()
        .and_then(|d| d.meta)
        .map(|m| (m.version_id.unwrap_or_default(), m.last_updated))
        .unwrap_or_default()
}

/// A resource looked up along the line of snapshots behind the one being served.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    /// The lake.
    pub lake: &'a Lake,
    /// The snapshot being served.
    pub current: &'a Snapshot,
    /// The resource's type.
    pub resource_type: &'a str,
    /// Its id.
    pub id: &'a str,
    /// The caller's patients (`None`: unconfined), confining as a read does.
    pub patients: Option<&'a [String]>,
}

impl Lookup<'_> {
    /// The versions of the resource other than `current_version` (the one the served snapshot
    /// holds, empty when it holds none), kept by the snapshots it was built on (its parent, the
    /// parent's parent, … as long as they are retained), newest first, one per `versionId`.
    /// Snapshots a rollback left behind are not on that line and are not asked. With
    /// `wanted`, the walk stops at that version (and returns at most it).
    ///
    /// A snapshot pruned while it is being read is passed over.
    ///
    /// # Errors
    /// Engine errors, and I/O errors of snapshots that still exist.
    pub async fn earlier_versions(
        &self,
        current_version: &str,
        wanted: Option<&str>,
    ) -> Result<Vec<Version>, QueryError> {
        let mut out = Vec::new();
        self.walk(current_version, |v| match wanted {
            Some(w) if w == v.version_id => {
                out.push(v);
                false
            }
            Some(_) => true,
            None => {
                out.push(v);
                true
            }
        })
        .await?;
        Ok(out)
    }

    /// For a resource the served snapshot does not hold: the newest version the snapshots it
    /// was built on hold — `Some` when a later run deleted it, `None` when no kept snapshot on
    /// that line knew it.
    ///
    /// # Errors
    /// As [`Lookup::earlier_versions`].
    pub async fn deleted(&self) -> Result<Option<Version>, QueryError> {
        let mut last = None;
        self.walk("", |v| {
            last = Some(v);
            false
        })
        .await?;
        Ok(last)
    }

    /// Walk the line of snapshots behind the served one, handing each version of the resource
    /// not seen yet (and not `current_version`) to `found`, newest first, until it returns
    /// `false`.
    async fn walk(
        &self,
        current_version: &str,
        mut found: impl FnMut(Version) -> bool,
    ) -> Result<(), QueryError> {
        let (lake, current, t) = (self.lake, self.current, self.resource_type);
        let mut seen_files: HashSet<PathBuf> =
            Lake::table_files(&current.dir, t)?.into_iter().collect();
        let mut seen_versions: HashSet<String> = HashSet::from([current_version.to_string()]);
        let snapshots = current.dir.parent().map(PathBuf::from).unwrap_or_default();
        let mut visited = HashSet::from([current.name.clone()]);
        let mut next = parent_of(lake, &current.name);
        while let Some(name) = next {
            if !visited.insert(name.clone()) {
                break;
            }
            next = parent_of(lake, &name);
            let dir = snapshots.join(&name);
            let files: Vec<PathBuf> = Lake::table_files(&dir, t)?
                .into_iter()
                .filter(|f| seen_files.insert(f.clone()))
                .collect();
            if files.is_empty() {
                continue;
            }
            let options = OpenOptions {
                direct: false,
                row_cache_bytes: 0,
            };
            let read = match Snapshot::open_files(
                name,
                dir.clone(),
                vec![(t.to_string(), files)],
                options,
            )
            .await
            {
                Ok(older) => older.read(t, self.id, self.patients).await,
                Err(e) => Err(e),
            };
            let text = match read {
                Ok(Some(text)) => text,
                Ok(None) => continue,
                Err(_) if !dir.join("manifest.json").exists() => continue,
                Err(e) => return Err(e),
            };
            let version = Version::of(text);
            if seen_versions.insert(version.version_id.clone()) && !found(version) {
                break;
            }
        }
        Ok(())
    }
}

/// The snapshot `name` was built on, if it is still kept (a pruned snapshot has no manifest, so
/// the line ends there).
fn parent_of(lake: &Lake, name: &str) -> Option<String> {
    lake.manifest(name).ok()?.parent
}
