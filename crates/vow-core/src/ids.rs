//! Typed, prefixed, time-sortable identifiers (`job_01J…`, `ten_…`, `key_…`, `lease_…`).
//!
//! Each id is a ULID rendered in Crockford base32 behind a prefix naming its kind, so an
//! id pasted in the wrong place is rejected by the parser instead of silently not found.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::ValidationError;

/// One monotonic ULID source per process: ids made within the same millisecond still
/// sort in creation order (the random part is incremented), which FIFO leasing and
/// newest-first listing rely on.
fn next_ulid() -> ulid::Ulid {
    static GEN: std::sync::Mutex<ulid::Generator> = std::sync::Mutex::new(ulid::Generator::new());
    let mut gen = GEN.lock().unwrap_or_else(|e| e.into_inner());
    gen.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id, ordered after ids created earlier in the same process.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, next_ulid()))
            }

            /// The id as text, prefix included.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let body = s.strip_prefix($prefix).ok_or_else(|| {
                    ValidationError::invalid(stringify!($name), format!("must start with `{}`", $prefix))
                })?;
                ulid::Ulid::from_string(body).map_err(|_| {
                    ValidationError::invalid(stringify!($name), "is not a valid id")
                })?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .examples([concat!($prefix, "01JD0000000000000000000000")])
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}

typed_id!(
    /// Identifies a job, unique across tenants.
    JobId, "job_"
);
typed_id!(
    /// Identifies a tenant.
    TenantId, "ten_"
);
typed_id!(
    /// Identifies an API key (not the secret part).
    KeyId, "key_"
);
typed_id!(
    /// Identifies one lease of one job; fences complete/fail/heartbeat.
    LeaseId, "lease_"
);
typed_id!(
    /// Identifies a tenant's webhook subscription.
    WebhookId, "wh_"
);
typed_id!(
    /// Identifies one completion notice to one URL; sent as its `webhook-id`, the same
    /// on every retry so receivers can drop duplicates.
    DeliveryId, "msg_"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_wrong_prefix() {
        let id = JobId::generate();
        assert!(id.as_str().starts_with("job_"));
        assert_eq!(id.as_str().parse::<JobId>().unwrap(), id);
        assert!(id.as_str().parse::<TenantId>().is_err());
        assert!("job_nope".parse::<JobId>().is_err());
    }

    #[test]
    fn ids_sort_by_creation_order_even_within_a_millisecond() {
        let ids: Vec<JobId> = (0..10_000).map(|_| JobId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
