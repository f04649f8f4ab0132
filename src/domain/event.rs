//! The change feed's vocabulary: what kind of change an event records.

/// What happened to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Created,
    /// A replace or a partial update.
    Updated,
    Deleted,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [EventKind::Created, EventKind::Updated, EventKind::Deleted];

    /// The event's `type`: `user.created`, `user.updated` or `user.deleted`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "user.created",
            EventKind::Updated => "user.updated",
            EventKind::Deleted => "user.deleted",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("user.renamed"), None);
    }
}
