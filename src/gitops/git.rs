//! git, run through the one process runner (`nix::cmd`), never through a shell: the commit a
//! working tree is at (and whether it has uncommitted changes), fetching the followed branch
//! into the server's bare mirror, and checking a commit out into a directory of its own.
//!
//! Every call runs with prompts off (`GIT_TERMINAL_PROMPT=0`: a server has nobody to ask)
//! and only the transports a fleet repository is reached by (`GIT_ALLOW_PROTOCOL`), so a
//! URL cannot make git run a program (`ext::`).

use std::path::Path;
use std::time::Duration;

use crate::deploy::Commit;
use crate::nix::cmd::{CmdError, Command};

/// How long one fetch or checkout may take before it is killed.
pub const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// `git` with the environment every call gets.
pub fn git() -> Command {
    Command::new("git")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ALLOW_PROTOCOL", "file:git:http:https:ssh")
        .env("LC_ALL", "C")
        .timeout(GIT_TIMEOUT)
}

/// The ref the followed branch is fetched to in the mirror.
pub fn mirror_ref(branch: &str) -> String {
    format!("refs/bento/{branch}")
}

/// The commit the working tree at `dir` is at, and whether it has changes to tracked files
/// that are not committed (staged or not). `None` when `dir` is not in a git repository
/// (or git refuses it, e.g. another user's repository).
pub fn describe(dir: &Path) -> Option<Commit> {
    let head = git()
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--verify", "--quiet", "HEAD"])
        .run()
        .ok()?
        .stdout_text();
    if !is_commit_id(&head) {
        return None;
    }
    let status = git()
        .arg("-C")
        .arg(dir)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .run()
        .ok()?;
    Some(Commit {
        id: head,
        dirty: !status.stdout.is_empty(),
    })
}

/// A full hexadecimal commit id (SHA-1 or SHA-256).
pub fn is_commit_id(text: &str) -> bool {
    (text.len() == 40 || text.len() == 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Fetches `branch` of `url` into the bare repository `mirror` (made when missing) and
/// returns the commit it points to.
pub async fn fetch(mirror: &Path, url: &str, branch: &str) -> Result<String, CmdError> {
    if !mirror.join("HEAD").exists() {
        git()
            .args(["init", "--quiet", "--bare"])
            .arg(mirror)
            .run_async()
            .await?;
    }
    let refspec = format!("+refs/heads/{branch}:{}", mirror_ref(branch));
    git()
        .arg("-C")
        .arg(mirror)
        .args(["fetch", "--quiet", "--no-tags", "--", url, &refspec])
        .run_async()
        .await?;
    let out = git()
        .arg("-C")
        .arg(mirror)
        .args(["rev-parse", "--verify"])
        .arg(format!("{}^{{commit}}", mirror_ref(branch)))
        .run_async()
        .await?;
    Ok(out.stdout_text())
}

/// The first line of `commit`'s message, for operators.
pub async fn subject(mirror: &Path, commit: &str) -> Option<String> {
    let out = git()
        .arg("-C")
        .arg(mirror)
        .args(["log", "-1", "--format=%s", commit])
        .run_async()
        .await
        .ok()?;
    Some(out.stdout_text())
}

/// Checks `commit` of `mirror` out into `dir` (which must not exist): a local clone
/// (objects hard-linked) with a detached HEAD.
pub async fn checkout(mirror: &Path, dir: &Path, commit: &str) -> Result<(), CmdError> {
    git()
        .args(["clone", "--quiet", "--no-checkout", "--"])
        .arg(mirror)
        .arg(dir)
        .run_async()
        .await?;
    git()
        .arg("-C")
        .arg(dir)
        .args(["checkout", "--quiet", "--detach", commit])
        .run_async()
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) {
        git()
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .run()
            .unwrap();
    }

    #[tokio::test]
    async fn a_branch_is_fetched_checked_out_and_described() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        assert_eq!(describe(&repo), None, "not a repository yet");
        run(&repo, &["init", "--quiet", "--initial-branch=main"]);
        std::fs::write(repo.join("a"), "one\n").unwrap();
        run(&repo, &["add", "a"]);
        run(&repo, &["commit", "--quiet", "-m", "first commit"]);
        let first = describe(&repo).unwrap();
        assert!(is_commit_id(&first.id) && !first.dirty, "{first:?}");

        // Untracked files do not make a tree dirty (Nix does not see them); changes do.
        std::fs::write(repo.join("untracked"), "x").unwrap();
        assert!(!describe(&repo).unwrap().dirty);
        std::fs::write(repo.join("a"), "two\n").unwrap();
        assert_eq!(
            describe(&repo),
            Some(Commit {
                id: first.id.clone(),
                dirty: true
            })
        );

        let mirror = tmp.path().join("state/git/mirror");
        std::fs::create_dir_all(mirror.parent().unwrap()).unwrap();
        let url = repo.to_string_lossy();
        assert_eq!(fetch(&mirror, &url, "main").await.unwrap(), first.id);
        run(&repo, &["commit", "--quiet", "-am", "second commit"]);
        let second = describe(&repo).unwrap();
        assert_ne!(second.id, first.id);
        assert_eq!(fetch(&mirror, &url, "main").await.unwrap(), second.id);
        assert_eq!(
            subject(&mirror, &second.id).await.as_deref(),
            Some("second commit")
        );

        let out = tmp.path().join("checkout");
        checkout(&mirror, &out, &first.id).await.unwrap();
        assert_eq!(std::fs::read_to_string(out.join("a")).unwrap(), "one\n");
        assert_eq!(describe(&out).map(|c| c.id), Some(first.id));

        let err = fetch(&mirror, &url, "nope").await.unwrap_err().to_string();
        assert!(err.contains("git") && err.contains("nope"), "{err}");
    }
}
