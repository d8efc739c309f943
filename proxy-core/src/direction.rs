//! Which side of the workload a request or connection is on. Metric labels, tap events, logs
//! and the two listeners all name it; one type keeps the spelling in one place.

use std::fmt;

/// Which side of the workload a listener, connection or request serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Calls from the local application to other services.
    Outbound,
    /// Calls from other workloads to the local application.
    Inbound,
}

impl Direction {
    /// Both directions, outbound first.
    pub const ALL: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

    /// The label value Linkerd uses: `outbound` or `inbound`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }

    /// Parses a label value.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Direction;

    #[test]
    fn spelled_as_linkerd_labels_and_parsed_back() {
        for d in Direction::ALL {
            assert_eq!(Direction::parse(d.as_str()), Some(d));
            assert_eq!(d.to_string(), d.as_str());
            assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{d}\""));
        }
        assert_eq!(Direction::parse("sideways"), None);
    }
}
