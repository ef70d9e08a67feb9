//! At start: finishing or undoing an activation that an interrupted agent left in flight.
//! A switch still running in its own unit (the agent was stopped while it ran, maybe by
//! the switch itself) is waited for first; then what runs now decides (`decide::recover`).

use super::super::activate;
use super::super::decide::{self, Phase, Recovery};
use super::super::journal::InFlight;
use super::super::link::Link;
use super::{Attempt, Cycle, CycleError, Ended, Progress, Target, roll_back};
use crate::clock::unix_now;
use crate::report::Outcome;

impl<L: Link + Sync> Cycle<'_, L> {
    /// Finishes or undoes the activation `flight` that the last run left unfinished.
    pub(super) async fn recover(
        &mut self,
        flight: InFlight,
        progress: &Progress,
    ) -> Result<Ended, CycleError> {
        let agent = self.agent;
        let mut attempt = Attempt::new(progress);
        // The profile and the switch each have the activation deadline.
        let switch_deadline = flight.started + 2 * agent.activation_timeout.as_secs();
        activate::await_switch_units(agent, flight.generation, switch_deadline, &mut attempt.log)
            .await;
        let running = super::system::running_system(&agent.current_system);
        let is_new = running.as_deref() == Some(flight.store_path.as_str());
        let is_prev = running.is_some() && running == flight.previous;
        let decision = decide::recover(flight.phase, is_new, is_prev, unix_now(), flight.deadline);
        attempt.note(format!(
            "recovering generation {} left {:?} by an interrupted agent: {decision:?}",
            flight.generation, flight.phase
        ));
        let target = Target {
            generation: flight.generation,
            wanted: flight.store_path.clone(),
        };
        match decision {
            Recovery::ResumeConfirming => self.confirm(attempt, &target, flight.previous).await,
            Recovery::RollBack => {
                let rolled = roll_back(
                    agent,
                    &mut attempt,
                    flight.generation,
                    flight.previous.as_deref(),
                )
                .await;
                let what = format!(
                    "the agent was interrupted while {} generation {} and it was not confirmed by its deadline",
                    match flight.phase {
                        Phase::Activating => "activating",
                        Phase::Confirming => "confirming",
                    },
                    flight.generation
                );
                let (outcome, reason) = match rolled {
                    Ok(()) => (Outcome::RolledBack, what),
                    Err(why) => (
                        Outcome::RollbackFailed,
                        format!("{what}; rolling back failed: {why}"),
                    ),
                };
                self.conclude(attempt, &target, outcome, Some(reason)).await
            }
            Recovery::Abandon => {
                if let Some(prev) = flight.previous.as_deref() {
                    let _ = activate::set_profile(agent, prev, &mut attempt.log).await;
                }
                self.journal.in_flight = None;
                self.journal.save(&agent.state_dir)?;
                Ok(Ended::Idle)
            }
        }
    }
}
