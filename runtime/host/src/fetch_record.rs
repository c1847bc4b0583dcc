//! Answers recorded for replay (`record_fetches`): each answer a plugin's
//! live path fetched is kept, by service and path; a generation being
//! rebuilt (a shadow, a catch-up) fetches from the record first, so a
//! rebuild puts no load on the services and sees what the live path saw,
//! and a comparison between generations shows only the plugins' own
//! differences. A fetch that asks for a fresh answer still goes to the
//! service. The host defines what a record is; the store keeps it.

use projector_guest::Fetched;

/// Where one plugin's fetched answers are kept.
pub trait FetchRecord: Send + Sync + std::fmt::Debug {
    /// The answer last recorded for `path` of `service`, if any.
    fn recorded(&self, service: &str, path: &str) -> Option<Fetched>;
    /// Keep `answer`, fetched from `service` at `path`.
    fn record(&self, service: &str, path: &str, answer: &Fetched);
}
