//! The one runner for external processes (`nix`, `nix-store`, `switch-to-configuration`, ...).
//!
//! Arguments are passed one by one, never through a shell. A failure carries the argv, the
//! exit status and the tail of stderr, so that "child process exited with error code" is
//! never all a user gets to see.
//!
//! Deadlines: [`Command::timeout`] bounds an async run; a child that outlives it is killed
//! with SIGKILL and the error keeps the tails of what it printed. With
//! [`Command::own_process_group`] the child leads a process group of its own and the
//! whole group is killed (on timeout, or when the run's future is dropped), so nothing it
//! started lingers; [`Command::run_async_started`] tells the caller the group's id.

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
    #[error("`{argv}` timed out after {}s and was killed{}", .timeout.as_secs(), fmt_tails(.stderr_tail, .stdout_tail))]
    Timeout {
        argv: String,
        timeout: Duration,
        stderr_tail: String,
        stdout_tail: String,
    },
}

fn fmt_tails(stderr: &str, stdout: &str) -> String {
    match (stderr.trim().is_empty(), stdout.trim().is_empty()) {
        (false, _) => fmt_tail(stderr),
        (true, false) => format!("; it printed last:\n{}", stdout.trim_end()),
        (true, true) => String::new(),
    }
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

    /// Whether the process was killed for outliving its timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, CmdError::Timeout { .. })
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
    own_group: bool,
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
            own_group: false,
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

    /// Starts the child as the leader of a process group of its own: a terminal's Ctrl-C
    /// no longer reaches it, and a timeout or a dropped run kills the whole group, so that
    /// nothing it started outlives it. For callers that record the group
    /// ([`Command::run_async_started`]) and clean up after themselves.
    pub fn own_process_group(mut self) -> Self {
        self.own_group = true;
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
        if self.own_group {
            use std::os::unix::process::CommandExt as _;
            c.process_group(0);
        }
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

    /// Runs the process to completion on the tokio runtime; the child (its whole process
    /// group, with [`Command::own_process_group`]) is killed if the future is dropped or the
    /// timeout passes.
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
        self.run_inner(&mut |_| {}, &mut on_line, None).await
    }

    /// Like [`Command::run_async_with`], and tells `on_start` the child's process id as
    /// soon as it runs (with [`Command::own_process_group`], also its process group id),
    /// e.g. to record it where a later process can find a group left behind.
    pub async fn run_async_started(
        &self,
        mut on_start: impl FnMut(u32) + Send,
        mut on_line: impl FnMut(&str) + Send,
    ) -> Result<Output, CmdError> {
        self.run_inner(&mut on_start, &mut on_line, None).await
    }

    /// Runs the process handing stdout to `on_stdout` in chunks as it arrives, without
    /// keeping it (a NAR streamed into a hash); [`Output::stdout`] stays empty. `on_start`
    /// as in [`Command::run_async_started`].
    pub async fn run_async_streaming(
        &self,
        mut on_start: impl FnMut(u32) + Send,
        mut on_stdout: impl FnMut(&[u8]) + Send,
    ) -> Result<Output, CmdError> {
        self.run_inner(&mut on_start, &mut |_| {}, Some(&mut on_stdout))
            .await
    }

    async fn run_inner(
        &self,
        on_start: &mut (dyn FnMut(u32) + Send),
        on_line: &mut (dyn FnMut(&str) + Send),
        mut on_stdout: Option<&mut StdoutSink<'_>>,
    ) -> Result<Output, CmdError> {
        let argv = self.argv();
        tracing::debug!(argv = %argv, "running");
        let mut cmd = tokio::process::Command::from(self.std_command());
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| CmdError::Spawn {
            argv: argv.clone(),
            source,
        })?;
        // From here until the child has exited, dropping this future or a timeout kills it
        // (and its group).
        let mut reaper = Reaper::new(child.id(), self.own_group);
        if let Some(pid) = child.id() {
            on_start(pid);
        }
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
        let stdout = child.stdout.take();
        // Stdout is read line by line when its lines are wanted, else in chunks.
        let (mut out_lines, mut out_raw) = if self.lines_of_stdout {
            (stdout.map(tokio::io::BufReader::new), None)
        } else {
            (None, stdout)
        };
        let mut err_lines = child.stderr.take().map(tokio::io::BufReader::new);
        let (mut err_buf, mut out_buf) = (Vec::new(), Vec::new());
        let (mut err_line, mut out_line) = (Vec::new(), Vec::new());
        let mut chunk = vec![0u8; 64 * 1024];
        let deadline = self.timeout.map(|t| tokio::time::Instant::now() + t);
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        let mut timed_out = false;
        // `read_until` keeps what it read in the buffer when another branch wins, so a line
        // is handed on only once it is whole (or the stream ended).
        while err_lines.is_some() || out_lines.is_some() || out_raw.is_some() {
            tokio::select! {
                n = read_line(&mut err_lines, &mut err_line), if err_lines.is_some() => {
                    if n.map_err(io_err)? == 0 {
                        err_lines = None;
                    }
                    take_line(&mut err_line, &mut err_buf, on_line);
                }
                n = read_line(&mut out_lines, &mut out_line), if out_lines.is_some() => {
                    if n.map_err(io_err)? == 0 {
                        out_lines = None;
                    }
                    take_line(&mut out_line, &mut out_buf, on_line);
                }
                n = read_chunk(&mut out_raw, &mut chunk), if out_raw.is_some() => {
                    let n = n.map_err(io_err)?;
                    if n == 0 {
                        out_raw = None;
                    } else if let Some(sink) = on_stdout.as_mut() {
                        sink(&chunk[..n]);
                        keep_tail(&mut out_buf, &chunk[..n], STDERR_TAIL_BYTES);
                    } else {
                        out_buf.extend_from_slice(&chunk[..n]);
                    }
                }
                () = &mut expired => {
                    timed_out = true;
                    break;
                }
            }
        }
        let status = if timed_out {
            None
        } else {
            tokio::select! {
                status = child.wait() => Some(status.map_err(io_err)?),
                () = &mut expired => None,
            }
        };
        let Some(status) = status else {
            reaper.kill();
            // Reap it; SIGKILL ends it at once unless the kernel holds it.
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            return Err(CmdError::Timeout {
                argv,
                timeout: self.timeout.unwrap_or_default(),
                stderr_tail: tail(&err_buf, STDERR_TAIL_BYTES),
                stdout_tail: tail(&out_buf, STDERR_TAIL_BYTES),
            });
        };
        reaper.disarm();
        if let Some(task) = stdin_task {
            // A process may exit without reading all of stdin; that is its business.
            let _ = task.await;
        }
        if on_stdout.is_some() {
            out_buf.clear();
        }
        finish(argv, status, out_buf, err_buf)
    }
}

/// Where [`Command::run_async_streaming`] hands stdout's chunks.
type StdoutSink<'a> = dyn FnMut(&[u8]) + Send + 'a;

/// Kills a child that is still running when its run ends early (timeout, or the future
/// dropped): its whole process group when it has one of its own, else the child alone.
struct Reaper {
    pid: Option<rustix::process::Pid>,
    group: bool,
}

impl Reaper {
    fn new(pid: Option<u32>, group: bool) -> Reaper {
        let pid = pid
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw);
        Reaper { pid, group }
    }

    fn kill(&mut self) {
        use rustix::process::{Signal, kill_process, kill_process_group};
        if let Some(pid) = self.pid.take() {
            // Already gone is fine.
            let _ = if self.group {
                kill_process_group(pid, Signal::KILL)
            } else {
                kill_process(pid, Signal::KILL)
            };
        }
    }

    /// The child exited and was reaped: nothing to kill (its id may be reused).
    fn disarm(&mut self) {
        self.pid = None;
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads what is there into `buf`; 0 at the end of the stream.
async fn read_chunk<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut Option<R>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match reader {
        Some(r) => r.read(buf).await,
        None => Ok(0),
    }
}

/// Appends `bytes` to `kept`, keeping only its last `max` bytes (or a little more).
fn keep_tail(kept: &mut Vec<u8>, bytes: &[u8], max: usize) {
    kept.extend_from_slice(bytes);
    if kept.len() > 2 * max {
        kept.drain(..kept.len() - max);
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
fn take_line(line: &mut Vec<u8>, kept: &mut Vec<u8>, on_line: &mut (dyn FnMut(&str) + Send)) {
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

    /// Whether `pid` runs (a zombie waiting for its reaper does not).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group_and_keeps_the_tails() {
        let mut leader = 0;
        let mut lines = Vec::new();
        let err = Command::new("sh")
            .args([
                "-c",
                "sleep 300 & echo \"grandchild $!\" >&2; echo 'last words'; wait",
            ])
            .own_process_group()
            .timeout(Duration::from_millis(500))
            .run_async_started(|pid| leader = pid, |l| lines.push(l.to_owned()))
            .await
            .err();
        let Some(CmdError::Timeout {
            stderr_tail,
            stdout_tail,
            ..
        }) = &err
        else {
            panic!("expected a timeout, got {err:?}")
        };
        assert!(stderr_tail.contains("grandchild"), "{stderr_tail}");
        assert_eq!(stdout_tail.trim(), "last words");
        let msg = err.as_ref().map(ToString::to_string).unwrap_or_default();
        assert!(msg.contains("timed out after 0s"), "{msg}");
        let grandchild: u32 = lines
            .iter()
            .find_map(|l| l.strip_prefix("grandchild "))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {lines:?}"));
        assert_ne!(leader, 0, "on_start was called");
        // Positive control: the grandchild was in the leader's group.
        let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
        if let Some((_, rest)) = stat.rsplit_once(") ") {
            let pgid: u32 = rest.split_whitespace().nth(2).unwrap().parse().unwrap();
            assert_eq!(pgid, leader);
        }
        for _ in 0..50 {
            if !alive(grandchild) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(grandchild), "the grandchild outlived the timeout");
    }

    #[tokio::test]
    async fn a_dropped_run_kills_its_group() {
        let (tx, rx) = std::sync::mpsc::channel();
        let sh = Command::new("sh")
            .args(["-c", "sleep 300 & echo $! >&2; wait"])
            .own_process_group();
        let run = sh.run_async_with(move |l| {
            let _ = tx.send(l.to_owned());
        });
        let line = tokio::select! {
            _ = run => panic!("sh ended by itself"),
            line = async {
                loop {
                    if let Ok(l) = rx.try_recv() {
                        break l;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            } => line,
        };
        let pid: u32 = line.trim().parse().unwrap();
        for _ in 0..50 {
            if !alive(pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(pid), "the background sleep survived the dropped run");
    }

    #[tokio::test]
    async fn streamed_stdout_reaches_the_sink_and_is_not_kept() {
        let mut got = Vec::new();
        let out = Command::new("sh")
            .args(["-c", "head -c 300000 /dev/zero"])
            .run_async_streaming(|_| {}, |chunk| got.extend_from_slice(chunk))
            .await;
        assert_eq!(got.len(), 300_000);
        assert_eq!(out.map(|o| o.stdout.len()).ok(), Some(0));
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
