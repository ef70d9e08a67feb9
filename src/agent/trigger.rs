//! The local trigger: `bento agent trigger` asks the running agent to check now and streams
//! its progress. It speaks over a unix socket that only root (and an optional group) may
//! write to; never over the network.
//!
//! Protocol: the client sends `check\n`; the agent answers with the attempt's log lines,
//! then one final line `done: <result>`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

#[derive(Debug, Error)]
pub enum TriggerError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("group {0:?} does not exist (getent group {0} finds nothing)")]
    NoGroup(String),
    #[error("cannot look up group {group:?}: {source}")]
    GroupLookup {
        group: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the agent at {path}: {source}; is `bento agent` running?")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lost the agent at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A request from a trigger client: the loop runs an attempt and answers with its result.
pub type Request = oneshot::Sender<String>;

/// The id of group `name`, through NSS (`getgrnam_r`), so that groups from LDAP, systemd's
/// userdb or NixOS' declarative users are found like those of `/etc/group`. The `nix` crate
/// (not our `crate::nix`) does the call.
fn group_id(name: &str) -> Result<u32, TriggerError> {
    match ::nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(TriggerError::NoGroup(name.to_owned())),
        Err(errno) => Err(TriggerError::GroupLookup {
            group: name.to_owned(),
            source: errno.into(),
        }),
    }
}

/// Binds the socket (replacing a stale one), mode 0600, or 0660 owned by `group`.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, TriggerError> {
    let err = |source| TriggerError::Listen {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(err)?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    if let Some(g) = group {
        let gid = group_id(g)?;
        rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid)))
            .map_err(|e| err(e.into()))?;
    }
    Ok(listener)
}

/// Serves trigger clients until the listener fails: each `check` is forwarded to the
/// agent's loop, and the progress of the attempt it starts is streamed back.
pub async fn serve(
    listener: UnixListener,
    requests: mpsc::Sender<Request>,
    progress: broadcast::Sender<String>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let requests = requests.clone();
        let lines = progress.subscribe();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, requests, lines).await {
                tracing::debug!(error = %e, "trigger client went away");
            }
        });
    }
}

async fn handle(
    stream: UnixStream,
    requests: mpsc::Sender<Request>,
    mut lines: broadcast::Receiver<String>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut request = String::new();
    BufReader::new(read).read_line(&mut request).await?;
    if request.trim() != "check" {
        write.write_all(b"done: unknown request\n").await?;
        return Ok(());
    }
    let (tx, mut rx) = oneshot::channel();
    if requests.send(tx).await.is_err() {
        write
            .write_all(b"done: the agent is shutting down\n")
            .await?;
        return Ok(());
    }
    loop {
        tokio::select! {
            result = &mut rx => {
                let result = result.unwrap_or_else(|_| "the attempt was abandoned".into());
                // Lines sent before the result are already queued: deliver them first.
                while let Ok(l) = lines.try_recv() {
                    write.write_all(format!("{l}\n").as_bytes()).await?;
                }
                write.write_all(format!("done: {result}\n").as_bytes()).await?;
                return Ok(());
            }
            line = lines.recv() => match line {
                Ok(l) => write.write_all(format!("{l}\n").as_bytes()).await?,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

/// The client side: asks for a check and prints progress lines as they come; returns the
/// final result line.
pub async fn request_check(
    path: &Path,
    mut on_line: impl FnMut(&str),
) -> Result<String, TriggerError> {
    let io = |source| TriggerError::Io {
        path: path.to_owned(),
        source,
    };
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| TriggerError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    write.write_all(b"check\n").await.map_err(io)?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await.map_err(io)? {
        if let Some(result) = line.strip_prefix("done: ") {
            return Ok(result.to_owned());
        }
        on_line(&line);
    }
    Err(io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the agent closed the connection before the attempt ended",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_streams_progress_then_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let listener = bind(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only root may trigger");
        let (req_tx, mut req_rx) = mpsc::channel::<Request>(1);
        let (prog, _) = broadcast::channel(16);
        tokio::spawn(serve(listener, req_tx, prog.clone()));
        // The agent's loop: on a request, log two lines and answer.
        tokio::spawn(async move {
            while let Some(answer) = req_rx.recv().await {
                let _ = prog.send("copying".into());
                let _ = prog.send("activating".into());
                let _ = answer.send("applied".into());
            }
        });
        let mut seen = Vec::new();
        let result = request_check(&path, |l| seen.push(l.to_owned()))
            .await
            .unwrap();
        assert_eq!(result, "applied");
        assert_eq!(seen, vec!["copying", "activating"]);
    }

    #[test]
    fn groups_are_found_through_nss() {
        // Every system has group 0; its name is read from NSS, then looked up by name.
        let root = ::nix::unistd::Group::from_gid(::nix::unistd::Gid::from_raw(0))
            .unwrap()
            .unwrap();
        assert_eq!(group_id(&root.name).unwrap(), 0);
        let err = group_id("bento-no-such-group").unwrap_err();
        assert!(
            matches!(&err, TriggerError::NoGroup(g) if g == "bento-no-such-group"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn no_agent_is_a_clear_error() {
        let err = request_check(Path::new("/nonexistent/bento.sock"), |_| {})
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("is `bento agent` running"), "{err}");
    }
}
