//! First start: with an empty store, create the tenant `default`, a root key and an
//! admin key of `default`, store their hashes, and write the plaintexts once to
//! `<data-dir>/root.key` and `<data-dir>/default-admin.key` (mode 0600).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use vow_core::auth::{ApiKeySecret, Role};
use vow_core::{TenantId, TenantName};
use vow_store::{ApiKeyInsert, Store, TenantInsert};

use crate::App;

/// Where the bootstrap wrote its keys, if it ran.
#[derive(Debug, Clone, Default)]
pub struct Bootstrapped {
    /// The root key (unless `VOW_ROOT_KEY` was given).
    pub root_key: Option<String>,
    /// The admin key of tenant `default`.
    pub admin_key: Option<String>,
    /// Files written.
    pub files: Vec<PathBuf>,
}

fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    // Overwrite: with an empty store no earlier key is valid, and a crash between writing
    // the file and storing the hash must not block the next start.
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{secret}")?;
    f.sync_all()?;
    Ok(())
}

/// Runs the first-start bootstrap if the store has no tenants.
pub async fn bootstrap(
    app: &App,
    data_dir: &Path,
    env_root_key: bool,
) -> anyhow::Result<Bootstrapped> {
    let store: &dyn Store = app.store.as_ref();
    if !store.tenant_list().await?.is_empty() {
        return Ok(Bootstrapped::default());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let now = app.clock.now();
    let mut out = Bootstrapped::default();
    if !env_root_key {
        let root = ApiKeySecret::generate();
        let path = data_dir.join("root.key");
        write_secret(&path, root.expose())?;
        store
            .api_key_insert(&ApiKeyInsert {
                id: root.id().clone(),
                tenant_id: None,
                role: Role::Root,
                hash: root.hash(),
                now,
            })
            .await?;
        out.root_key = Some(root.expose().to_owned());
        out.files.push(path);
    }
    let tenant = match store
        .tenant_insert(&TenantInsert {
            id: TenantId::generate(),
            name: "default".parse::<TenantName>()?,
            max_pending: None,
            now,
        })
        .await
    {
        Ok(t) => t,
        // Another node bootstrapped the shared store at the same moment: nothing to do.
        Err(vow_store::StoreError::Conflict(_)) => {
            tracing::info!("another node bootstrapped the store first");
            return Ok(out);
        }
        Err(e) => return Err(e.into()),
    };
    let admin = ApiKeySecret::generate();
    let path = data_dir.join("default-admin.key");
    write_secret(&path, admin.expose())?;
    store
        .api_key_insert(&ApiKeyInsert {
            id: admin.id().clone(),
            tenant_id: Some(tenant.id),
            role: Role::Admin,
            hash: admin.hash(),
            now,
        })
        .await?;
    out.admin_key = Some(admin.expose().to_owned());
    out.files.push(path);
    Ok(out)
}
