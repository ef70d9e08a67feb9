//! Exit codes of `bento agent --once`: API for scripts, systemd units and monitoring.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | applied: the release's system runs and was confirmed (or already ran) |
//! | 1 | error: configuration, state, or the server could not be reached to fetch |
//! | 3 | nothing to do: same generation, or one already failed or waiting for retry |
//! | 4 | refused: bad signature, another host's release, replayed generation, tampered closure |
//! | 5 | failed: the closure could not be copied, or activation failed (rolled back) |
//! | 6 | rolled back: not confirmed in time; or retry later (server unreachable) |
//! | 7 | busy: another agent holds the lock |
//! | 8 | rollback failed: the host may run neither system fully; an operator must look |
//! | 9 | restart: the running system brings another agent configuration or binary |

use crate::report::Outcome;

use super::cycle::Ended;

pub const APPLIED: u8 = 0;
pub const ERROR: u8 = 1;
pub const NOTHING_TO_DO: u8 = 3;
pub const REFUSED: u8 = 4;
pub const FAILED: u8 = 5;
pub const ROLLED_BACK: u8 = 6;
pub const BUSY: u8 = 7;
pub const ROLLBACK_FAILED: u8 = 8;
/// The attempt ended and was reported; systemd is to start the agent the running system
/// names (`Restart=always`).
pub const RESTART: u8 = 9;

pub fn code(ended: &Ended) -> u8 {
    match ended {
        Ended::Idle => NOTHING_TO_DO,
        Ended::Reported(o) => match o {
            Outcome::Applied | Outcome::UpToDate => APPLIED,
            Outcome::Refused => REFUSED,
            Outcome::CopyFailed | Outcome::ActivationFailed => FAILED,
            Outcome::RolledBack | Outcome::RetryLater | Outcome::Recovered => ROLLED_BACK,
            Outcome::RollbackFailed => ROLLBACK_FAILED,
            Outcome::Deploying | Outcome::Unconfirmed => ERROR,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_per_class() {
        let cases = [
            (Ended::Idle, NOTHING_TO_DO),
            (Ended::Reported(Outcome::Applied), APPLIED),
            (Ended::Reported(Outcome::UpToDate), APPLIED),
            (Ended::Reported(Outcome::Refused), REFUSED),
            (Ended::Reported(Outcome::CopyFailed), FAILED),
            (Ended::Reported(Outcome::ActivationFailed), FAILED),
            (Ended::Reported(Outcome::RolledBack), ROLLED_BACK),
            (Ended::Reported(Outcome::RetryLater), ROLLED_BACK),
            (Ended::Reported(Outcome::RollbackFailed), ROLLBACK_FAILED),
        ];
        for (ended, want) in cases {
            assert_eq!(code(&ended), want, "{ended:?}");
        }
        let all = [
            APPLIED,
            ERROR,
            NOTHING_TO_DO,
            REFUSED,
            FAILED,
            ROLLED_BACK,
            BUSY,
            ROLLBACK_FAILED,
            RESTART,
        ];
        let set: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
    }
}
