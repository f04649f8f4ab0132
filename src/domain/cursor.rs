use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// Where the next page of a listing starts: after the user with this id.
///
/// Clients treat it as opaque; it is versioned so its encoding can change without
/// misreading cursors that older responses handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub after_id: i64,
}

impl Cursor {
    const VERSION: &'static str = "v1:";

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}{}", Self::VERSION, self.after_id))
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        let invalid = || "the cursor is not one this API issued".to_owned();
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
        let text = std::str::from_utf8(&bytes).map_err(|_| invalid())?;
        let after_id = text
            .strip_prefix(Self::VERSION)
            .and_then(|id| id.parse::<i64>().ok())
            .filter(|id| *id >= 0)
            .ok_or_else(invalid)?;
        Ok(Self { after_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_tampering() {
        let cursor = Cursor { after_id: 42 };
        assert_eq!(Cursor::parse(&cursor.encode()), Ok(cursor));
        for bad in ["", "!!", "djE6", "djI6NDI", "djE6LTE", "djE6eA"] {
            assert!(Cursor::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
