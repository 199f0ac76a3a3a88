//! Queue ids: the name of a message, in log lines, in the 250 reply and on disk.
//!
//! A [`QueueId`] is a ULID: 26 characters of Crockford base32, safe in file names, sortable by
//! creation time. Ids from one process are strictly increasing (a monotonic generator), so a
//! listing of `queue/` is in arrival order. This module only names things; where the files
//! live is `disk`'s business.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::{Generator, Ulid};

use crate::Error;

/// The process-wide monotonic generator. A global is acceptable here: it holds no
/// configuration, only "the last id handed out", and every spool in the process benefits from
/// ids that never repeat or go backwards.
static GENERATOR: Mutex<Generator> = Mutex::new(Generator::new());

/// The id of one queued message; names its files (`ID.msg`, `ID.env`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(Ulid);

impl QueueId {
    /// Length of the textual form.
    pub const LEN: usize = ulid::ULID_LEN;

    /// A new id, later than every id this process generated before.
    pub fn generate() -> QueueId {
        // A poisoned lock only means another thread panicked while holding it; the generator
        // inside is still a valid "previous id", so carry on with it.
        let mut generator = GENERATOR
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ulid = match generator.generate() {
            Ok(ulid) => ulid,
            // 2^80 ids in one millisecond: step into the next millisecond rather than fail.
            Err(overflow) => overflow.commit_overflow_increment(),
        };
        QueueId(ulid)
    }

    /// Wraps an existing ULID (for tests and tools that build ids themselves).
    pub fn from_ulid(ulid: Ulid) -> QueueId {
        QueueId(ulid)
    }

    /// The ULID inside.
    pub fn ulid(self) -> Ulid {
        self.0
    }

    /// Milliseconds since the Unix epoch at which the id was generated.
    pub fn timestamp_ms(self) -> u64 {
        self.0.timestamp_ms()
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; ulid::ULID_LEN];
        f.write_str(self.0.array_to_str(&mut buf))
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueId({self})")
    }
}

impl FromStr for QueueId {
    type Err = Error;

    /// Parses the 26-character form. Lower case is accepted (Crockford base32 is
    /// case-insensitive) but [`Display`](fmt::Display) always writes upper case, so file
    /// names stay canonical.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != ulid::ULID_LEN {
            return Err(Error::InvalidQueueId {
                text: text.to_owned(),
            });
        }
        Ulid::from_string(text)
            .map(QueueId)
            .map_err(|_| Error::InvalidQueueId {
                text: text.to_owned(),
            })
    }
}

impl Serialize for QueueId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for QueueId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip() {
        let id = QueueId::generate();
        let text = id.to_string();
        assert_eq!(text.len(), 26);
        assert_eq!(text.parse::<QueueId>().unwrap(), id);
        assert_eq!(text.to_lowercase().parse::<QueueId>().unwrap(), id);
    }

    #[test]
    fn ids_increase() {
        let ids: Vec<QueueId> = (0..1000).map(|_| QueueId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let mut texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let before = texts.clone();
        texts.sort();
        assert_eq!(texts, before, "text order is id order");
    }

    #[test]
    fn rejects_non_ids() {
        for bad in [
            "",
            "x",
            "01ARZ3NDEKTSV4RRFFQ69G5FA",
            "01ARZ3NDEKTSV4RRFFQ69G5FAVX",
            "../../etc/passwd012345678",
        ] {
            assert!(bad.parse::<QueueId>().is_err(), "{bad:?}");
        }
        // 26 characters but outside the alphabet (U is not Crockford base32).
        assert!("UUUUUUUUUUUUUUUUUUUUUUUUUU".parse::<QueueId>().is_err());
    }
}
