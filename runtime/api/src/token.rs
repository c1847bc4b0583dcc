//! Position tokens for read-your-writes (seed 004).
//!
//! A token names, per partition of a source, the offset of the last
//! record a writer produced: `log@0:15,3:44`. A read that carries it waits
//! until the plugin has applied those records. Ingest returns one; a
//! Kafka producer can build one from the offsets its sends reported.

use std::collections::BTreeMap;
use std::fmt;

/// A position token: per partition of one source, the offset of the last record written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Name of the source the offsets are in (e.g. `log`).
    pub source: String,
    /// Partition → offset of the last record written there.
    pub offsets: BTreeMap<u32, u64>,
}

impl Token {
    /// Parses `<source>@<partition>:<offset>[,...]`; a partition given twice
    /// keeps its highest offset.
    pub fn parse(text: &str) -> Result<Token, String> {
        let bad = |why: &str| {
            format!("bad token {text:?}: {why}; expected <source>@<partition>:<offset>[,...]")
        };
        // The last `@`: a source name may hold one, an offset list never.
        let (source, list) = text.rsplit_once('@').ok_or_else(|| bad("no `@`"))?;
        if source.is_empty() {
            return Err(bad("empty source"));
        }
        let mut offsets = BTreeMap::new();
        for item in list.split(',') {
            let (p, o) = item
                .split_once(':')
                .ok_or_else(|| bad(&format!("{item:?} has no `:`")))?;
            let p: u32 = p
                .parse()
                .map_err(|_| bad(&format!("partition {p:?} is not a number")))?;
            let o: u64 = o
                .parse()
                .map_err(|_| bad(&format!("offset {o:?} is not a number")))?;
            let slot = offsets.entry(p).or_insert(o);
            *slot = (*slot).max(o);
        }
        Ok(Token {
            source: source.to_string(),
            offsets,
        })
    }
}

impl Token {
    /// The position just past the token's records, for a read of a view
    /// as of it: each named partition's next offset bound.
    pub fn as_of(&self) -> projector_core::engine::AsOf {
        projector_core::engine::AsOf::Position(
            self.offsets
                .iter()
                .map(|(p, o)| (self.source.clone(), *p, o + 1))
                .collect(),
        )
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@", self.source)?;
        for (i, (p, o)) in self.offsets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}:{o}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_text_parses_or_says_why(text in ".{0,40}") {
            if let Err(e) = Token::parse(&text) {
                prop_assert!(e.starts_with("bad token"), "{}", e);
            }
        }

        #[test]
        fn a_token_round_trips(
            source in "[^,]{1,12}",
            offsets in prop::collection::btree_map(any::<u32>(), any::<u64>(), 1..6),
        ) {
            let token = Token { source, offsets };
            prop_assert_eq!(Token::parse(&token.to_string()), Ok(token));
        }
    }

    #[test]
    fn tokens_round_trip_and_keep_the_highest_offset() {
        let t = Token::parse("log@3:44,0:15,3:40").expect("valid");
        assert_eq!(t.to_string(), "log@0:15,3:44");
        assert_eq!(Token::parse(&t.to_string()), Ok(t));
    }

    #[test]
    fn bad_tokens_say_why() {
        for (text, why) in [
            ("log", "no `@`"),
            ("@0:1", "empty source"),
            ("log@0", "has no `:`"),
            ("log@x:1", "partition \"x\""),
            ("log@0:-1", "offset \"-1\""),
            ("log@", "has no `:`"),
        ] {
            let e = Token::parse(text).expect_err("rejected");
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
