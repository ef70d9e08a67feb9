//! The last successful build of each host, `builds/<host>.json`, written atomically:
//! what `bento deploy --no-build` publishes. A record of a newer format is refused, never
//! silently replaced.

use serde::{Deserialize, Serialize};

use super::BuildError;
use crate::config::StateDir;
use crate::durable;

/// The record format this code writes and reads.
pub const RECORD_FORMAT: u32 = 1;

/// One host's last successful build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRecord {
    pub format: u32,
    pub host: String,
    pub drv_path: String,
    pub store_path: String,
    /// Seconds since the Unix epoch.
    pub built: u64,
}

/// Writes `builds/<host>.json` atomically.
pub fn write(state_dir: &StateDir, record: &BuildRecord) -> Result<(), BuildError> {
    let path = state_dir.build_record(&record.host);
    let dir = state_dir.builds_dir();
    std::fs::create_dir_all(&dir).map_err(|source| BuildError::Io { path: dir, source })?;
    let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| BuildError::Record {
        path: path.clone(),
        problem: e.to_string(),
    })?;
    bytes.push(b'\n');
    durable::write_atomic(&path, &bytes, 0o644)?;
    Ok(())
}

/// Reads a host's last build record; `None` when the host was never built.
pub fn read(state_dir: &StateDir, host: &str) -> Result<Option<BuildRecord>, BuildError> {
    let path = state_dir.build_record(host);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(BuildError::Io { path, source }),
    };
    let bad = |problem: String| BuildError::Record {
        path: path.clone(),
        problem,
    };
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let format = value.get("format").and_then(serde_json::Value::as_u64);
    if format != Some(u64::from(RECORD_FORMAT)) {
        return Err(bad(format!(
            "has format {format:?}, but this Bento reads format {RECORD_FORMAT}"
        )));
    }
    let record: BuildRecord = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    if record.host != host {
        return Err(bad(format!("is for host {:?}", record.host)));
    }
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_missing_and_refused_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path());
        assert_eq!(read(&s, "web1").unwrap(), None);
        let rec = BuildRecord {
            format: RECORD_FORMAT,
            host: "web1".into(),
            drv_path: "/nix/store/3g1zvp7n3436q9rvq5hhda8p8yhayppn-x.drv".into(),
            store_path: "/nix/store/fqa7y5gpznfbw8x0givjsd3gpdcr0bmy-x".into(),
            built: 1_790_000_000,
        };
        write(&s, &rec).unwrap();
        assert_eq!(read(&s, "web1").unwrap(), Some(rec.clone()));

        let cases = [
            (r#"{"format": 2, "host": "web1"}"#, "format Some(2)"),
            ("{", "EOF"),
            (r#"{"format": 1, "host": "web1"}"#, "missing field"),
        ];
        for (text, want) in cases {
            std::fs::write(s.build_record("web1"), text).unwrap();
            let msg = read(&s, "web1").unwrap_err().to_string();
            assert!(
                msg.contains("builds/web1.json") && msg.contains(want),
                "{msg}"
            );
        }
        std::fs::write(s.build_record("web2"), serde_json::to_string(&rec).unwrap()).unwrap();
        assert!(
            read(&s, "web2")
                .unwrap_err()
                .to_string()
                .contains("is for host \"web1\"")
        );
    }
}
