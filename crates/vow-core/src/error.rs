//! Validation errors raised while parsing input at the edge.

/// Input that does not satisfy vow's rules; maps to `400 validation_failed`
/// (or `413 payload_too_large` for size limits) at the HTTP edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A field has a value outside its allowed range or format.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as named in the API.
        field: String,
        /// What is wrong with it, for humans.
        reason: String,
    },
    /// A payload, result or batch exceeds its configured size limit.
    #[error("{what} is {actual} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        actual: usize,
        /// The limit it broke.
        limit: usize,
    },
}

impl ValidationError {
    /// Shorthand for [`ValidationError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
