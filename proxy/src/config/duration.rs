//! Durations as config spells them: Gateway API style, `250ms`, `10s`, `1m30s`, `1h`; `0s`
//! means "disabled" where a field says so.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parsed duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// Whole seconds.
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    /// Milliseconds.
    pub const fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
}

/// Why a duration did not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration {0:?}: expected a number and a unit (ms, s, m, h), like 500ms or 1m30s")]
pub struct DurError(String);

impl FromStr for Dur {
    type Err = DurError;

    fn from_str(s: &str) -> Result<Self, DurError> {
        let err = || DurError(s.to_owned());
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(err());
        }
        let mut total = Duration::ZERO;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 9 {
                return Err(err());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let part = match &rest[..unit] {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n * 60),
                "h" => Duration::from_secs(n * 3600),
                _ => return Err(err()),
            };
            total += part;
            rest = &rest[unit..];
        }
        Ok(Self(total))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateway_api_durations() {
        assert_eq!("250ms".parse::<Dur>().unwrap(), Dur::millis(250));
        assert_eq!("10s".parse::<Dur>().unwrap(), Dur::secs(10));
        assert_eq!("1m30s".parse::<Dur>().unwrap(), Dur::secs(90));
        assert_eq!("1h".parse::<Dur>().unwrap(), Dur::secs(3600));
        assert_eq!("0s".parse::<Dur>().unwrap(), Dur::secs(0));
        for bad in ["", "10", "s", "1x", "1.5s", "-1s", "10 s"] {
            assert!(bad.parse::<Dur>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn displays_round_trip() {
        for s in ["250ms", "10s", "90s"] {
            let d: Dur = s.parse().unwrap();
            assert_eq!(d.to_string().parse::<Dur>().unwrap(), d);
        }
    }
}
