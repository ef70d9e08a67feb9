//! Limits and timeouts of the SFTP server, with their defaults in one place.
//!
//! The CLI layer (or the fleet file's `[serve]` section, when it has one) fills a
//! [`SftpConfig`]; [`SftpConfig::validate`] refuses combinations that cannot work.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SftpConfigError {
    #[error("SFTP server config: {field} must be greater than zero")]
    Zero { field: &'static str },
    #[error(
        "SFTP server config: max_report_bytes ({file}) is larger than max_reports_total_bytes ({total}); one report could never be kept"
    )]
    ReportCaps { file: u64, total: u64 },
    #[error(
        "SFTP server config: watch_max_wait ({wait:?}) must be shorter than idle_timeout ({idle:?}), or waiting agents are cut off as idle"
    )]
    WaitLongerThanIdle { wait: Duration, idle: Duration },
}

/// Limits and timeouts. `Default` gives values sized for a fleet of thousands of hosts.
#[derive(Debug, Clone)]
pub struct SftpConfig {
    /// Connections open at once, authenticated or not; more are closed on accept.
    pub max_sessions: usize,
    /// Authenticated sessions one host may hold at once (an agent needs one, two during
    /// confirmation); further logins of that host are rejected.
    pub max_sessions_per_host: usize,
    /// Connections one source address may hold before authenticating (a slot is given back
    /// at login); further ones are closed at once.
    pub max_unauthenticated_per_ip: usize,
    /// A connection must authenticate within this time or is closed.
    pub auth_timeout: Duration,
    /// A session that sends nothing for this long is closed (russh's inactivity timeout).
    pub idle_timeout: Duration,
    /// Every rejected authentication answer takes this long (constant time).
    pub auth_rejection_time: Duration,
    /// Authentication attempts per connection.
    pub max_auth_attempts: usize,
    /// Sustained requests per second per session (SFTP requests and SSH channel requests).
    pub request_rate: f64,
    /// Requests a session may send in a burst above the sustained rate.
    pub request_burst: u32,
    /// Largest report file; an upload that goes past it is refused and its partial file removed.
    pub max_report_bytes: u64,
    /// Reports of one host kept in total; the oldest are deleted past it.
    pub max_reports_total_bytes: u64,
    /// Reports of one host kept; the oldest are deleted past it.
    pub max_reports: usize,
    /// Open SFTP handles per session.
    pub max_open_handles: usize,
    /// Watch reads waiting at once per session.
    pub max_watches_per_session: usize,
    /// Longest a watch read waits before answering with the unchanged generation.
    pub watch_max_wait: Duration,
    /// How often the release files of watched hosts are checked for changes made without
    /// [`super::Sessions::notify_release_changed`].
    pub release_poll_interval: Duration,
    /// Largest answer to one SFTP read.
    pub max_read_len: u32,
}

impl Default for SftpConfig {
    fn default() -> Self {
        SftpConfig {
            max_sessions: 8192,
            max_sessions_per_host: 4,
            max_unauthenticated_per_ip: 32,
            auth_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(300),
            auth_rejection_time: Duration::from_millis(500),
            max_auth_attempts: 6,
            request_rate: 200.0,
            request_burst: 1000,
            max_report_bytes: 4 << 20,
            max_reports_total_bytes: 64 << 20,
            max_reports: 200,
            max_open_handles: 32,
            max_watches_per_session: 4,
            watch_max_wait: Duration::from_secs(60),
            release_poll_interval: Duration::from_secs(2),
            max_read_len: 64 * 1024,
        }
    }
}

impl SftpConfig {
    pub fn validate(&self) -> Result<(), SftpConfigError> {
        let nonzero: [(&'static str, bool); 11] = [
            ("max_sessions", self.max_sessions > 0),
            ("max_sessions_per_host", self.max_sessions_per_host > 0),
            (
                "max_unauthenticated_per_ip",
                self.max_unauthenticated_per_ip > 0,
            ),
            ("auth_timeout", !self.auth_timeout.is_zero()),
            ("idle_timeout", !self.idle_timeout.is_zero()),
            ("request_rate", self.request_rate > 0.0),
            ("max_report_bytes", self.max_report_bytes > 0),
            ("max_reports", self.max_reports > 0),
            ("max_open_handles", self.max_open_handles > 0),
            (
                "release_poll_interval",
                !self.release_poll_interval.is_zero(),
            ),
            ("max_read_len", self.max_read_len > 0),
        ];
        if let Some((field, _)) = nonzero.iter().find(|(_, ok)| !ok) {
            return Err(SftpConfigError::Zero { field });
        }
        if self.max_report_bytes > self.max_reports_total_bytes {
            return Err(SftpConfigError::ReportCaps {
                file: self.max_report_bytes,
                total: self.max_reports_total_bytes,
            });
        }
        if self.watch_max_wait >= self.idle_timeout {
            return Err(SftpConfigError::WaitLongerThanIdle {
                wait: self.watch_max_wait,
                idle: self.idle_timeout,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(SftpConfig::default().validate(), Ok(()));
    }

    #[test]
    fn impossible_combinations_are_refused() {
        let c = SftpConfig {
            max_report_bytes: 10,
            max_reports_total_bytes: 5,
            ..SftpConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(SftpConfigError::ReportCaps { .. })
        ));
        let c = SftpConfig {
            max_sessions: 0,
            ..SftpConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(SftpConfigError::Zero {
                field: "max_sessions"
            })
        );
        let c = SftpConfig {
            watch_max_wait: Duration::from_secs(600),
            ..SftpConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(SftpConfigError::WaitLongerThanIdle { .. })
        ));
    }
}
