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

/// An answer one change of a view was built from, as its history keeps
/// it (plugins with `record_fetches`): which service and path, the
/// answer's status and a digest of its body (the first 16 hex digits of
/// its SHA-256), so the answer is told apart from later ones at the same
/// path after the record has moved on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AnswerUsed {
    /// The service it came from.
    pub service: String,
    /// The path asked.
    pub path: String,
    /// The answer's HTTP status.
    pub status: u16,
    /// The first 16 hex digits of the SHA-256 of its body.
    pub digest: String,
    /// Taken from the record (a replay) rather than asked of the service.
    pub from_record: bool,
    /// A stale answer from the cache (the service was down).
    pub stale: bool,
}

impl AnswerUsed {
    /// `answer`, fetched from `service` at `path`, as a change keeps it.
    pub fn of(service: &str, path: &str, answer: &Fetched, from_record: bool) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&answer.body);
        AnswerUsed {
            service: service.into(),
            path: path.into(),
            status: answer.status,
            digest: hex::encode(&digest[..8]),
            from_record,
            stale: answer.stale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_used_is_told_by_a_digest_of_its_body() {
        let a = Fetched {
            status: 200,
            body: br#"{"version":1}"#.to_vec(),
            stale: false,
        };
        let b = Fetched {
            body: br#"{"version":2}"#.to_vec(),
            ..a.clone()
        };
        let used = AnswerUsed::of("billing", "/billing/a1", &a, false);
        assert_eq!(used.digest.len(), 16);
        assert_eq!(used, AnswerUsed::of("billing", "/billing/a1", &a, false));
        assert_ne!(
            used.digest,
            AnswerUsed::of("billing", "/billing/a1", &b, false).digest
        );
        assert_eq!(
            (used.status, used.from_record, used.stale),
            (200, false, false)
        );
    }
}
