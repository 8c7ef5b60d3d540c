//! Enum <-> text, one way for every enum whose values are written as text
//! (metric labels, the status table, `protocol` on the wire): `strum`'s
//! `IntoStaticStr` names each value (`#[strum(serialize = "5xx")]` where the
//! name is not the variant's in snake_case) and `VariantArray` lists them
//! (`VARIANTS`, for series that should exist before their first count);
//! [`Label::as_str`] reads the name.

/// The text of an enum value; every `IntoStaticStr + VariantArray` enum has it.
pub trait Label: Copy + Into<&'static str> {
    fn as_str(self) -> &'static str {
        self.into()
    }
}

impl<T: Copy + Into<&'static str> + strum::VariantArray> Label for T {}

#[cfg(test)]
mod tests {
    use super::Label;
    use crate::protocol::{BackendState, Protocol};
    use crate::registry::Observation;
    use crate::telemetry::{CodeClass, EjectionReason, ReloadResult};
    use strum::VariantArray;

    /// The texts are part of the metrics' and the wire's contract.
    #[test]
    fn texts_are_the_contracted_ones() {
        assert_eq!(BackendState::NotReady.as_str(), "not_ready");
        assert_eq!(Protocol::H2c.as_str(), "h2c");
        assert_eq!(Protocol::Http1.as_str(), "http1");
        assert_eq!(Observation::Stranger.as_str(), "id_mismatch");
        assert_eq!(CodeClass::ServerError.as_str(), "5xx");
        assert_eq!(EjectionReason::ServerError.as_str(), "5xx");
        assert_eq!(ReloadResult::Refused.as_str(), "refused");
        let states: Vec<&str> = BackendState::VARIANTS.iter().map(|s| s.as_str()).collect();
        assert_eq!(states, ["healthy", "unhealthy", "not_ready", "draining"]);
    }
}
