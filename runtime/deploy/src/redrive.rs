//! Dead letters sent back through a plugin's serving version, as an act
//! the plugin's history records (who fixed what, and when): the engine
//! moves the letters ([`Engine::redrive`]); the registry notes it.
//!
//! [`Engine::redrive`]: projector_core::engine::Engine::redrive

use crate::{Action, Deployer, Result};
use projector_common::sync::Recover;
use projector_core::engine::{Redrive, Redriven};

impl Deployer {
    /// Send the dead letters `r` chooses back through the serving version
    /// of their plugin; a redrive that sent any is noted in the plugin's
    /// history with their count.
    pub fn redrive(&self, r: &Redrive) -> Result<Redriven> {
        let _one = self.busy.lock().recover();
        let done = self.engine.redrive(r)?;
        if done.redriven > 0 {
            let reason = format!(
                "{} dead letter{} sent back through {}",
                done.redriven,
                if done.redriven == 1 { "" } else { "s" },
                &done.version[..done.version.len().min(12)]
            );
            self.registry.record(
                &r.plugin,
                Action::Redrive,
                &done.version,
                None,
                Some(&reason),
            )?;
        }
        Ok(done)
    }
}
