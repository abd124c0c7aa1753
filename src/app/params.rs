//! Query parameters as types, each parsed once (from a query string's text
//! by HTTP, from a message's integers by gRPC) and valid by construction:
//! a [`PageSize`] that exists is within the configured bounds.

use chrono::{DateTime, Utc};

use super::Limits;
use crate::event_store::FeedCursor;
use crate::problem::FieldError;

/// How many items a page holds: 1 to `Limits::page_size_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    /// `requested`, or the default when absent; an error naming `limit`
    /// when out of bounds.
    pub fn new(requested: Option<u32>, limits: &Limits) -> Result<PageSize, FieldError> {
        match requested {
            None => Ok(PageSize(limits.page_size_default.min(limits.page_size_max))),
            Some(n) if (1..=limits.page_size_max).contains(&n) => Ok(PageSize(n)),
            Some(_) => Err(PageSize::out_of_bounds(limits)),
        }
    }

    /// A query string's `limit`.
    pub fn parse(text: Option<&str>, limits: &Limits) -> Result<PageSize, FieldError> {
        match text {
            None => PageSize::new(None, limits),
            Some(text) => match text.parse::<u32>() {
                Ok(n) => PageSize::new(Some(n), limits),
                Err(_) => Err(PageSize::out_of_bounds(limits)),
            },
        }
    }

    /// The largest page there is: for readers that page on their own.
    pub fn max(limits: &Limits) -> PageSize {
        PageSize(limits.page_size_max.max(1))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    fn out_of_bounds(limits: &Limits) -> FieldError {
        FieldError::new(
            "limit",
            format!("must be an integer from 1 to {}", limits.page_size_max),
        )
    }
}

/// Where a page of an account's history starts: just older than the item
/// it names (`position.seq`, the previous page's `next_cursor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryCursor {
    pub position: i64,
    pub seq: i32,
}

impl HistoryCursor {
    pub fn parse(text: &str) -> Result<HistoryCursor, FieldError> {
        let parsed = text
            .split_once('.')
            .and_then(|(position, seq)| Some((position.parse().ok()?, seq.parse().ok()?)));
        match parsed {
            Some((position, seq)) => Ok(HistoryCursor { position, seq }),
            None => Err(FieldError::new("cursor", "is not a cursor returned by this endpoint")),
        }
    }

    pub fn token(self) -> String {
        format!("{}.{}", self.position, self.seq)
    }
}

/// The feed's `after`: absent, empty or `0` is the beginning.
pub fn parse_feed_cursor(text: Option<&str>) -> Result<FeedCursor, FieldError> {
    match text {
        None | Some("") => Ok(FeedCursor::START),
        Some(text) => FeedCursor::parse(text)
            .ok_or_else(|| FieldError::new("after", "must be 0 or a next_after returned by this endpoint")),
    }
}

/// `min_position`: the answer must reflect the command that returned this
/// log position, and what the posting process made of it (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinPosition(pub i64);

impl MinPosition {
    /// A query string's `min_position`.
    pub fn parse(text: Option<&str>) -> Result<Option<MinPosition>, FieldError> {
        match text {
            None => Ok(None),
            Some(text) => MinPosition::new(Some(text.parse::<i64>().unwrap_or(-1))),
        }
    }

    /// A message's `min_position`.
    pub fn new(position: Option<i64>) -> Result<Option<MinPosition>, FieldError> {
        match position {
            None => Ok(None),
            Some(n) if n >= 0 => Ok(Some(MinPosition(n))),
            Some(_) => Err(FieldError::new("min_position", "must be a non-negative integer")),
        }
    }
}

/// The point a balance is replayed to: a time, or a global position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointInTime {
    AsOf(DateTime<Utc>),
    Position(i64),
}

impl PointInTime {
    /// From `as_of` (RFC 3339) and `position`: exactly one of them.
    /// Every problem is reported at once.
    pub fn parse(as_of: Option<&str>, position: Option<&str>) -> Result<PointInTime, Vec<FieldError>> {
        let mut errors = Vec::new();
        let as_of = as_of.and_then(|text| match DateTime::parse_from_rfc3339(text) {
            Ok(time) => Some(time.with_timezone(&Utc)),
            Err(_) => {
                errors.push(FieldError::new(
                    "as_of",
                    "must be an RFC 3339 time such as 2026-11-24T12:00:00Z",
                ));
                None
            }
        });
        let position = position.and_then(|text| match text.parse::<i64>() {
            Ok(n) if n >= 0 => Some(n),
            _ => {
                errors.push(FieldError::new("position", "must be a non-negative integer"));
                None
            }
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        match (as_of, position) {
            (Some(_), Some(_)) => Err(vec![FieldError::new(
                "position",
                "give either as_of or position, not both",
            )]),
            (Some(time), None) => Ok(PointInTime::AsOf(time)),
            (None, Some(position)) => Ok(PointInTime::Position(position)),
            (None, None) => Err(vec![FieldError::new("as_of", "give as_of (RFC 3339) or position")]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_bounded() {
        let limits = Limits::default();
        assert_eq!(PageSize::parse(None, &limits).unwrap().get(), limits.page_size_default);
        assert_eq!(PageSize::parse(Some("1000"), &limits).unwrap().get(), 1000);
        for bad in ["0", "1001", "-1", "ten", ""] {
            assert_eq!(PageSize::parse(Some(bad), &limits).unwrap_err().field, "limit", "{bad}");
        }
        assert_eq!(PageSize::new(Some(7), &limits).unwrap().get(), 7);
    }

    #[test]
    fn cursors_round_trip() {
        let cursor = HistoryCursor { position: 42, seq: 3 };
        assert_eq!(HistoryCursor::parse(&cursor.token()), Ok(cursor));
        assert!(HistoryCursor::parse("42").is_err());
        assert_eq!(parse_feed_cursor(Some("0")), Ok(FeedCursor::START));
        assert_eq!(parse_feed_cursor(None), Ok(FeedCursor::START));
        assert_eq!(parse_feed_cursor(Some("x")).unwrap_err().field, "after");
    }

    #[test]
    fn a_point_in_time_is_a_time_or_a_position() {
        assert_eq!(PointInTime::parse(None, Some("5")), Ok(PointInTime::Position(5)));
        assert!(matches!(
            PointInTime::parse(Some("2026-11-24T12:00:00Z"), None),
            Ok(PointInTime::AsOf(_))
        ));
        let fields = |r: Result<PointInTime, Vec<FieldError>>| -> Vec<String> {
            r.unwrap_err().into_iter().map(|e| e.field).collect()
        };
        assert_eq!(fields(PointInTime::parse(None, None)), ["as_of"]);
        assert_eq!(
            fields(PointInTime::parse(Some("2026-11-24T12:00:00Z"), Some("5"))),
            ["position"]
        );
        assert_eq!(
            fields(PointInTime::parse(Some("yesterday"), Some("-1"))),
            ["as_of", "position"]
        );
    }
}
