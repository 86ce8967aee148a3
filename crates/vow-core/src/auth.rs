//! API keys and roles: the key format, hashing, and what each role may do.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

use crate::{KeyId, ValidationError};

/// What a key may do. `root` is the server's own key (tenants and keys); the others
/// belong to one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages tenants and keys; sees no jobs.
    Root,
    /// Everything within its tenant.
    Admin,
    /// Enqueue, read, cancel, retry.
    Producer,
    /// Lease, heartbeat, complete, fail, read.
    Worker,
}

/// Operations guarded by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read jobs, queues and events of the tenant.
    Read,
    /// Enqueue jobs.
    Enqueue,
    /// Cancel or retry jobs.
    Control,
    /// Lease, heartbeat, complete, fail.
    Work,
    /// Change queue settings.
    ManageQueues,
    /// Manage webhook subscriptions and notice signing secrets.
    ManageWebhooks,
    /// Create and list tenants and keys.
    ManageTenants,
}

impl Role {
    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Admin => "admin",
            Role::Producer => "producer",
            Role::Worker => "worker",
        }
    }

    /// Whether a key of this role may perform `action`.
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Root => matches!(action, ManageTenants),
            Role::Admin => !matches!(action, ManageTenants),
            Role::Producer => matches!(action, Read | Enqueue | Control),
            Role::Worker => matches!(action, Read | Work),
        }
    }
}

impl FromStr for Role {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "root" => Ok(Role::Root),
            "admin" => Ok(Role::Admin),
            "producer" => Ok(Role::Producer),
            "worker" => Ok(Role::Worker),
            _ => Err(ValidationError::invalid(
                "role",
                format!("`{s}` is not one of admin, producer, worker"),
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A plaintext API key: `vow_<key id>_<secret>`. Only its SHA-256 is stored; the key id
/// in front lets the server find the record without scanning.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret {
    id: KeyId,
    full: String,
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeySecret({}, <redacted>)", self.id)
    }
}

impl ApiKeySecret {
    /// A new random key with a fresh id (256 bits of secret).
    pub fn generate() -> Self {
        let id = KeyId::generate();
        let secret: [u8; 32] = rand::random();
        Self::from_parts(id, &hex::encode(secret))
    }

    /// A key with a chosen secret (used for `VOW_ROOT_KEY`).
    pub fn from_parts(id: KeyId, secret: &str) -> Self {
        let full = format!("vow_{}_{}", id, secret);
        Self { id, full }
    }

    /// Parses a presented key; `None` when it is not in vow's format.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("vow_")?;
        let (id, secret) = rest.rsplit_once('_')?;
        let id: KeyId = id.parse().ok()?;
        if secret.is_empty() {
            return None;
        }
        Some(Self {
            id,
            full: s.to_owned(),
        })
    }

    /// The key's id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The plaintext, to show once.
    pub fn expose(&self) -> &str {
        &self.full
    }

    /// SHA-256 of the whole key, hex. Keys carry 256 random bits, so a fast hash is
    /// enough: there is nothing to brute-force.
    pub fn hash(&self) -> String {
        hash_key(&self.full)
    }
}

/// SHA-256 hex of a key's plaintext.
pub fn hash_key(plaintext: &str) -> String {
    hex::encode(Sha256::digest(plaintext.as_bytes()))
}

/// Compares two hashes in time independent of where they differ.
pub fn hashes_match(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_hash() {
        let k = ApiKeySecret::generate();
        let parsed = ApiKeySecret::parse(k.expose()).unwrap();
        assert_eq!(parsed.id(), k.id());
        assert!(hashes_match(&parsed.hash(), &k.hash()));
        assert!(!hashes_match(&hash_key("other"), &k.hash()));
        assert!(ApiKeySecret::parse("nope").is_none());
        assert!(ApiKeySecret::parse("vow_key_bad_x").is_none());
        assert!(!format!("{k:?}").contains(k.expose()));
    }

    #[test]
    fn roles_allow_what_api_md_says() {
        assert!(Role::Producer.allows(Action::Enqueue));
        assert!(!Role::Producer.allows(Action::Work));
        assert!(Role::Worker.allows(Action::Work));
        assert!(!Role::Worker.allows(Action::Enqueue));
        assert!(Role::Admin.allows(Action::ManageQueues));
        assert!(!Role::Admin.allows(Action::ManageTenants));
        assert!(Role::Root.allows(Action::ManageTenants));
        assert!(!Role::Root.allows(Action::Read));
    }
}
