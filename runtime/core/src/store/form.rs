//! A view's forms: the stored one (what the store keeps under the view's
//! key and in a commit's views record) and the changelog's (a version
//! byte, then the stored form).

use super::{Error, Result, ViewRecord};
use projector_guest::rules::View;

/// A view's stored form, appended to `buf`: the view and its time
/// (postcard), then, when the view remembers earlier versions, those as
/// (index of the source in its versions, distance below that source's
/// highest version). A view stored before `recent` existed is the first
/// part alone and reads back with none.
pub(crate) fn encode_view(record: &ViewRecord, buf: Vec<u8>) -> Vec<u8> {
    let head = (&record.view, record.updated_ms);
    let buf = postcard::to_extend(&head, buf).expect("postcard encodes a view into a Vec");
    let recent = &record.view.recent.0;
    if recent.is_empty() {
        return buf;
    }
    let versions = &record.view.versions.0;
    let compact: Vec<(u32, u64)> = recent
        .iter()
        .filter_map(|(source, version)| {
            let i = versions.iter().position(|(s, _)| s == source)?;
            Some((i as u32, versions[i].1.checked_sub(*version)?))
        })
        .collect();
    postcard::to_extend(&compact, buf).expect("postcard encodes a view into a Vec")
}

/// A view from its stored form (see [`encode_view`]).
pub(crate) fn decode_view(bytes: &[u8]) -> Result<ViewRecord> {
    let corrupt = |reason: String| Error::Corrupt {
        what: "view".into(),
        reason,
    };
    let ((mut view, updated_ms), rest) =
        postcard::take_from_bytes::<(View, i64)>(bytes).map_err(|e| corrupt(e.to_string()))?;
    if !rest.is_empty() {
        let compact: Vec<(u32, u64)> =
            postcard::from_bytes(rest).map_err(|e| corrupt(format!("recent versions: {e}")))?;
        for (i, below) in compact {
            let (source, top) = view.versions.0.get(i as usize).ok_or_else(|| {
                corrupt(format!("recent version of source #{i}, not in the view"))
            })?;
            let version = top
                .checked_sub(below)
                .ok_or_else(|| corrupt(format!("recent version {below} below 0")))?;
            view.recent.0.push((source.clone(), version));
        }
    }
    Ok(ViewRecord { view, updated_ms })
}

/// The version of a view's changelog form ([`changelog_value`]).
pub const CHANGELOG_ENCODING: u8 = 1;

/// A view as a changelog carries it: one byte, the encoding's version
/// ([`CHANGELOG_ENCODING`]), then the view's stored form (postcard: the
/// view's state, versions per source, status and time; then its recent
/// versions). A deleted view is a record without a value (a tombstone).
pub fn changelog_value(record: &ViewRecord) -> Vec<u8> {
    encode_view(record, vec![CHANGELOG_ENCODING])
}

/// A view from its changelog form (see [`changelog_value`]).
pub fn changelog_view(bytes: &[u8]) -> Result<ViewRecord> {
    match bytes.split_first() {
        Some((&CHANGELOG_ENCODING, rest)) => decode_view(rest),
        Some((v, _)) => Err(Error::Corrupt {
            what: "changelog view".into(),
            reason: format!("encoding version {v}, this runtime reads {CHANGELOG_ENCODING}"),
        }),
        None => Err(Error::Corrupt {
            what: "changelog view".into(),
            reason: "empty".into(),
        }),
    }
}
