//! Validated names: queues, groups, tenants. Constructed only through their parsers.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::ValidationError;

fn is_name(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $check:expr, $rule:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let check: fn(&str) -> bool = $check;
                if check(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(ValidationError::invalid($field, format!("`{}` must match {}", s.escape_debug(), $rule)))
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
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
                    .description(Some(concat!("Must match ", $rule)))
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}

name_type!(
    /// A queue name, namespaced per tenant: `[a-z0-9][a-z0-9._-]{0,63}`.
    QueueName, "queue", |s| is_name(s, 64), "[a-z0-9][a-z0-9._-]{0,63}"
);
name_type!(
    /// A tenant's unique name: `[a-z0-9][a-z0-9._-]{0,63}`.
    TenantName, "name", |s| is_name(s, 64), "[a-z0-9][a-z0-9._-]{0,63}"
);
name_type!(
    /// A fairness group key (e.g. one per end customer): 1 to 128 printable characters.
    GroupKey, "group", |s| !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control),
    "1 to 128 printable characters"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_rule() {
        for ok in ["a", "emails", "0", "pay.outs_v2-eu", &"a".repeat(64)] {
            assert!(ok.parse::<QueueName>().is_ok(), "{ok}");
        }
        for bad in ["", "Emails", "-a", ".a", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(bad.parse::<QueueName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn group_keys_reject_control_characters() {
        assert!("customer-42".parse::<GroupKey>().is_ok());
        assert!("Kunde 42 / EU".parse::<GroupKey>().is_ok());
        assert!("".parse::<GroupKey>().is_err());
        assert!("a\nb".parse::<GroupKey>().is_err());
    }
}
