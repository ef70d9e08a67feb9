//! The one runner for external processes (`nix`, `nix-store`, `switch-to-configuration`, ...).
//!
//! Arguments are passed one by one, never through a shell. A failure carries the argv, the
//! exit status and the tail of stderr, so that "child process exited with error code" is
//! never all a user gets to see.

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

/// How many bytes of stderr an error message keeps.
const STDERR_TAIL_BYTES: usize = 2000;

/// A failed process call.
#[derive(Debug, Error)]
pub enum CmdError {
    #[error("cannot start `{argv}`: {source}")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{argv}` failed while talking to the process: {source}")]
    Io {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{argv}` {status}{}", fmt_tail(.stderr_tail))]
    Failed {
        argv: String,
        status: String,
        code: Option<i32>,
        stderr_tail: String,
    },
    #[error("`{argv}` did not finish within {}s and was killed{}", .timeout.as_secs(), fmt_tail(.stderr_tail))]
    Timeout {
        argv: String,
        timeout: Duration,
        stderr_tail: String,
    },
}

fn fmt_tail(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!(":\n{}", tail.trim_end())
    }
}

impl CmdError {
    /// The exit code of a process that ran and failed, if it exited normally.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            CmdError::Failed { code, .. } => *code,
            _ => None,
        }
    }

    /// The tail of stderr of a process that ran, empty if it never started.
    pub fn stderr_tail(&self) -> &str {
        match self {
            CmdError::Failed { stderr_tail, .. } | CmdError::Timeout { stderr_tail, .. } => {
                stderr_tail
            }
            _ => "",
        }
    }
}

/// `nix` with the experimental features Bento relies on switched on, whatever the
/// machine's configuration says.
pub fn nix() -> Command {
    Command::new("nix").args(["--extra-experimental-features", "nix-command flakes"])
}

/// What a successful process printed.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// Stdout as text, lossily decoded, without the trailing newline.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim_end().to_owned()
    }
}

/// A process to run: program, arguments one by one, extra environment, working directory,
/// optional stdin bytes and an optional timeout.
#[derive(Debug, Clone)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
    lines_of_stdout: bool,
}

impl Command {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Command {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            timeout: None,
            lines_of_stdout: false,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// [`Command::run_async_with`] hands stdout's lines to its callback too, interleaved
    /// with stderr's as they arrive (for programs such as `switch-to-configuration` whose
    /// every line belongs in a log). Stdout is still returned whole in [`Output`].
    pub fn with_stdout_lines(mut self) -> Self {
        self.lines_of_stdout = true;
        self
    }

    /// The command line for messages: each argument quoted when it needs to be.
    pub fn argv(&self) -> String {
        std::iter::once(&self.program)
            .chain(self.args.iter())
            .map(|a| quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn std_command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(dir) = &self.cwd {
            c.current_dir(dir);
        }
        c.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        c.stdout(Stdio::piped());
        c.stderr(Stdio::piped());
        c
    }

    /// Runs the process to completion, blocking the current thread.
    ///
    /// A timeout, if set, is only honoured by [`Command::run_async`].
    pub fn run(&self) -> Result<Output, CmdError> {
        let argv = self.argv();
        tracing::debug!(argv = %argv, "running");
        let mut child = self
            .std_command()
            .spawn()
            .map_err(|source| CmdError::Spawn {
                argv: argv.clone(),
                source,
            })?;
        if let (Some(bytes), Some(mut stdin)) = (&self.stdin, child.stdin.take()) {
            stdin.write_all(bytes).map_err(|source| CmdError::Io {
                argv: argv.clone(),
                source,
            })?;
        }
        let out = child.wait_with_output().map_err(|source| CmdError::Io {
            argv: argv.clone(),
            source,
        })?;
        finish(argv, out.status, out.stdout, out.stderr)
    }

    /// Runs the process to completion on the tokio runtime; the child is killed if the
    /// future is dropped or the timeout passes.
    pub async fn run_async(&self) -> Result<Output, CmdError> {
        self.run_async_with(|_| {}).await
    }

    /// Like [`Command::run_async`], handing each line of stderr (and of stdout, with
    /// [`Command::with_stdout_lines`]) to `on_line` as it arrives (progress displays, logs
    /// of an attempt).
    pub async fn run_async_with(
        &self,
        mut on_line: impl FnMut(&str) + Send,
    ) -> Result<Output, CmdError> {
        let argv = self.argv();
        tracing::debug!(argv = %argv, "running");
        let mut cmd = tokio::process::Command::from(self.std_command());
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| CmdError::Spawn {
            argv: argv.clone(),
            source,
        })?;
        let io_err = |source| CmdError::Io {
            argv: argv.clone(),
            source,
        };
        let stdin_task = match (&self.stdin, child.stdin.take()) {
            (Some(bytes), Some(mut stdin)) => {
                let bytes = bytes.clone();
                Some(tokio::spawn(async move {
                    stdin.write_all(&bytes).await?;
                    stdin.shutdown().await
                }))
            }
            _ => None,
        };
        let mut stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // Stdout is read here line by line when its lines are wanted, else whole aside.
        let mut out_lines = if self.lines_of_stdout {
            stdout.take().map(tokio::io::BufReader::new)
        } else {
            None
        };
        let stdout_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(out) = stdout.as_mut() {
                out.read_to_end(&mut buf).await?;
            }
            Ok::<_, std::io::Error>(buf)
        });
        let work = async {
            let mut err_buf = Vec::new();
            let mut out_buf = Vec::new();
            let mut err_lines = stderr.map(tokio::io::BufReader::new);
            let (mut err_line, mut out_line) = (Vec::new(), Vec::new());
            // `read_until` keeps what it read in the buffer when the other branch wins, so a
            // line is handed on only once it is whole (or the stream ended).
            loop {
                tokio::select! {
                    n = read_line(&mut err_lines, &mut err_line), if err_lines.is_some() => {
                        if n.map_err(io_err)? == 0 {
                            err_lines = None;
                        }
                        take_line(&mut err_line, &mut err_buf, &mut on_line);
                    }
                    n = read_line(&mut out_lines, &mut out_line), if out_lines.is_some() => {
                        if n.map_err(io_err)? == 0 {
                            out_lines = None;
                        }
                        take_line(&mut out_line, &mut out_buf, &mut on_line);
                    }
                    else => break,
                }
            }
            let status = child.wait().await.map_err(io_err)?;
            Ok::<_, CmdError>((status, err_buf, out_buf))
        };
        let result = match self.timeout {
            Some(t) => match tokio::time::timeout(t, work).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(CmdError::Timeout {
                        argv,
                        timeout: t,
                        stderr_tail: String::new(),
                    });
                }
            },
            None => work.await,
        };
        let (status, err_buf, mut out_buf) = result?;
        if let Some(task) = stdin_task {
            // A process may exit without reading all of stdin; that is its business.
            let _ = task.await;
        }
        match stdout_task.await {
            Ok(r) => out_buf.extend(r.map_err(io_err)?),
            Err(e) => return Err(io_err(std::io::Error::other(e))),
        }
        finish(argv, status, out_buf, err_buf)
    }
}

/// Reads up to the next newline into `line` (appending); 0 at the end of the stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut Option<R>,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    match reader {
        Some(r) => r.read_until(b'\n', line).await,
        None => Ok(0),
    }
}

/// Hands a whole line (or the last, unterminated one) to `on_line` and keeps its bytes.
fn take_line(line: &mut Vec<u8>, kept: &mut Vec<u8>, on_line: &mut impl FnMut(&str)) {
    if line.is_empty() {
        return;
    }
    on_line(String::from_utf8_lossy(line).trim_end());
    kept.append(line);
}

fn finish(
    argv: String,
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
) -> Result<Output, CmdError> {
    if status.success() {
        return Ok(Output { stdout, stderr });
    }
    Err(CmdError::Failed {
        argv,
        status: describe_status(status),
        code: status.code(),
        stderr_tail: tail(&stderr, STDERR_TAIL_BYTES),
    })
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "ended abnormally".to_owned(),
    }
}

/// The last `max` bytes of `bytes`, cut at a line start when possible, lossily decoded.
pub fn tail(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let cut = &bytes[bytes.len() - max..];
    let start = cut.iter().position(|b| *b == b'\n').map_or(0, |p| p + 1);
    format!("...\n{}", String::from_utf8_lossy(&cut[start..]))
}

fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&b));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_argv_status_and_stderr_tail() {
        let err = Command::new("/bin/sh")
            .args(["-c", "echo first >&2; echo 'it broke' >&2; exit 3"])
            .run()
            .err();
        let Some(err) = err else {
            panic!("sh exiting 3 must fail")
        };
        let msg = err.to_string();
        assert!(msg.contains("/bin/sh -c"), "{msg}");
        assert!(msg.contains("exited with status 3"), "{msg}");
        assert!(msg.contains("it broke"), "{msg}");
        assert_eq!(err.exit_code(), Some(3));
    }

    #[test]
    fn arguments_are_not_split_by_a_shell() {
        let out = Command::new("printf")
            .args(["%s|", "a b", "$HOME", "c;d"])
            .run();
        assert_eq!(
            out.map(|o| o.stdout_text()).ok(),
            Some("a b|$HOME|c;d|".to_owned())
        );
    }

    #[test]
    fn missing_program_names_it() {
        let err = Command::new("/nonexistent/bento-test").run().err();
        assert!(
            matches!(err, Some(CmdError::Spawn { ref argv, .. }) if argv == "/nonexistent/bento-test")
        );
    }

    #[test]
    fn tail_keeps_the_end_at_a_line_start() {
        let text = b"line one\nline two\nline three\n";
        assert_eq!(tail(text, 100), "line one\nline two\nline three\n");
        assert_eq!(tail(text, 15), "...\nline three\n");
    }

    #[test]
    fn quoting_for_messages() {
        assert_eq!(quote("nix"), "nix");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[tokio::test]
    async fn async_run_streams_stderr_lines_and_honours_timeout() {
        let mut seen = Vec::new();
        let out = Command::new("/bin/sh")
            .args(["-c", "echo one >&2; echo two >&2; echo out"])
            .run_async_with(|l| seen.push(l.to_owned()))
            .await;
        assert_eq!(out.map(|o| o.stdout_text()).ok(), Some("out".to_owned()));
        assert_eq!(seen, vec!["one", "two"]);

        let err = Command::new("sleep")
            .arg("5")
            .timeout(Duration::from_millis(100))
            .run_async()
            .await
            .err();
        assert!(matches!(err, Some(CmdError::Timeout { .. })), "{err:?}");
    }

    #[tokio::test]
    async fn async_stdin_reaches_the_process() {
        let out = Command::new("cat").stdin_bytes("fed").run_async().await;
        assert_eq!(out.map(|o| o.stdout_text()).ok(), Some("fed".to_owned()));
    }

    #[tokio::test]
    async fn lines_of_both_streams_reach_the_callback_when_asked() {
        let script = "echo out1; echo err1 >&2; sleep 0.1; echo out2; printf err2 >&2";
        let mut both = Vec::new();
        let out = Command::new("sh")
            .args(["-c", script])
            .with_stdout_lines()
            .run_async_with(|l| both.push(l.to_owned()))
            .await
            .map(|o| {
                (
                    o.stdout_text(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                )
            });
        assert_eq!(
            out.ok(),
            Some(("out1\nout2".to_owned(), "err1\nerr2".to_owned()))
        );
        both.sort();
        assert_eq!(both, ["err1", "err2", "out1", "out2"]);

        // Without asking, stdout stays out of the callback (it may be JSON for the caller).
        let mut seen = Vec::new();
        let out = Command::new("sh")
            .args(["-c", script])
            .run_async_with(|l| seen.push(l.to_owned()))
            .await;
        assert_eq!(
            out.map(|o| o.stdout_text()).ok(),
            Some("out1\nout2".to_owned())
        );
        assert_eq!(seen, ["err1", "err2"]);
    }
}
