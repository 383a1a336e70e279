//! The default [`Store`]: one SQLite file (rusqlite, bundled SQLite), created 0600.
//!
//! One connection behind a mutex: the API's requests are short, and SQLite serialises writers
//! anyway. Other processes (the admin CLI while `serve` runs) wait up to five seconds for a lock.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::store::{GatewayRecord, IdentityRecord, RelayRecord, SessionRecord, Store, StoreError};
use super::token::Role;
use crate::id::{GatewayId, OrgId, RelayId};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orgs (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS identities (
    role TEXT NOT NULL,
    org TEXT NOT NULL,               -- '' for instance relays
    name TEXT NOT NULL,
    token_id TEXT NOT NULL UNIQUE,
    token_digest BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    relay_pin TEXT,
    PRIMARY KEY (role, org, name)
);
CREATE TABLE IF NOT EXISTS relays (
    name TEXT PRIMARY KEY,
    org TEXT NOT NULL,               -- '' for instance relays
    ssh_address TEXT NOT NULL,
    tls_address TEXT NOT NULL,
    hostnames TEXT NOT NULL,         -- JSON array
    registered_at INTEGER NOT NULL,
    cert_not_after INTEGER NOT NULL,
    last_heartbeat INTEGER,
    tunnels INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS gateways (
    org TEXT NOT NULL,
    name TEXT NOT NULL,
    assigned_relay TEXT NOT NULL,
    connected_relay TEXT,
    registered_at INTEGER NOT NULL,
    cert_not_after INTEGER NOT NULL,
    last_heartbeat INTEGER,
    PRIMARY KEY (org, name)
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    gateway TEXT NOT NULL,
    operator TEXT NOT NULL,
    target TEXT NOT NULL,
    relay TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    not_after INTEGER NOT NULL
);
PRAGMA user_version = 1;
";

/// The SQLite registry.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn org_col(org: Option<&OrgId>) -> &str {
    org.map_or("", OrgId::as_str)
}

fn i64_of(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{v} does not fit the database")))
}

fn u64_of(v: i64) -> rusqlite::Result<u64> {
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, v))
}

fn opt_u64(v: Option<i64>) -> rusqlite::Result<Option<u64>> {
    v.map(u64_of).transpose()
}

/// Reads a column that must hold a valid identifier.
fn parse_col<T: std::str::FromStr>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    text.parse().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            format!("{text:?} is not a valid identifier").into(),
        )
    })
}

fn opt_org(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<OrgId>> {
    let text: String = row.get(idx)?;
    if text.is_empty() {
        Ok(None)
    } else {
        parse_col(row, idx).map(Some)
    }
}

fn opt_relay(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<RelayId>> {
    let text: Option<String> = row.get(idx)?;
    match text {
        None => Ok(None),
        Some(_) => parse_col(row, idx).map(Some),
    }
}

const IDENTITY_COLS: &str =
    "role, org, name, token_id, token_digest, expires_at, created_at, revoked_at, relay_pin";

fn identity_row(row: &Row<'_>) -> rusqlite::Result<IdentityRecord> {
    let role: String = row.get(0)?;
    let role = Role::parse(&role).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown role {role:?}").into(),
        )
    })?;
    Ok(IdentityRecord {
        role,
        org: opt_org(row, 1)?,
        name: row.get(2)?,
        token_id: row.get(3)?,
        token_digest: row.get(4)?,
        expires_at: u64_of(row.get(5)?)?,
        created_at: u64_of(row.get(6)?)?,
        revoked_at: opt_u64(row.get(7)?)?,
        relay_pin: opt_relay(row, 8)?,
    })
}

const RELAY_COLS: &str = "name, org, ssh_address, tls_address, hostnames, registered_at, \
                          cert_not_after, last_heartbeat, tunnels";

fn relay_row(row: &Row<'_>) -> rusqlite::Result<RelayRecord> {
    let hostnames: String = row.get(4)?;
    let hostnames = serde_json::from_str(&hostnames).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(RelayRecord {
        name: parse_col(row, 0)?,
        org: opt_org(row, 1)?,
        ssh_address: row.get(2)?,
        tls_address: row.get(3)?,
        hostnames,
        registered_at: u64_of(row.get(5)?)?,
        cert_not_after: u64_of(row.get(6)?)?,
        last_heartbeat: opt_u64(row.get(7)?)?,
        tunnels: u64_of(row.get(8)?)?,
    })
}

const GATEWAY_COLS: &str = "org, name, assigned_relay, connected_relay, registered_at, \
                            cert_not_after, last_heartbeat";

fn gateway_row(row: &Row<'_>) -> rusqlite::Result<GatewayRecord> {
    Ok(GatewayRecord {
        org: parse_col(row, 0)?,
        name: parse_col(row, 1)?,
        assigned_relay: parse_col(row, 2)?,
        connected_relay: opt_relay(row, 3)?,
        registered_at: u64_of(row.get(4)?)?,
        cert_not_after: u64_of(row.get(5)?)?,
        last_heartbeat: opt_u64(row.get(6)?)?,
    })
}

fn read_error(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt(e.to_string()),
        other => backend(other),
    }
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) the database at `path` and its schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        let conn = Connection::open(path).map_err(backend)?;
        Self::prepare(conn)
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::prepare(Connection::open_in_memory().map_err(backend)?)
    }

    fn prepare(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(Duration::from_secs(5)).map_err(backend)?;
        conn.execute_batch("PRAGMA foreign_keys = ON;")
            .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written: every change is a
        // transaction, so the connection itself is still consistent.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn query_all<T>(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
        map: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(sql).map_err(backend)?;
        let rows = stmt.query_map(args, map).map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(read_error)
    }

    fn query_one<T>(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
        map: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        self.lock()
            .query_row(sql, args, map)
            .optional()
            .map_err(read_error)
    }

    fn execute_one(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
        missing: impl FnOnce() -> String,
    ) -> Result<(), StoreError> {
        match self.lock().execute(sql, args).map_err(backend)? {
            0 => Err(StoreError::NotFound(missing())),
            _ => Ok(()),
        }
    }
}

fn identity_name(role: Role, org: Option<&OrgId>, name: &str) -> String {
    match org {
        Some(org) => format!("{role} {name} in org {org}"),
        None => format!("instance {role} {name}"),
    }
}

impl Store for SqliteStore {
    fn create_org(
        &self,
        org: &OrgId,
        now: u64,
        make_authorities: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(backend)?;
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO orgs (name, created_at) VALUES (?1, ?2)",
                params![org.as_str(), i64_of(now)?],
            )
            .map_err(backend)?;
        if inserted == 0 {
            return Err(StoreError::Exists(format!("org {org}")));
        }
        make_authorities().map_err(StoreError::Backend)?;
        tx.commit().map_err(backend)
    }

    fn org_exists(&self, org: &OrgId) -> Result<bool, StoreError> {
        let found = self.query_one(
            "SELECT 1 FROM orgs WHERE name = ?1",
            params![org.as_str()],
            |_| Ok(()),
        )?;
        Ok(found.is_some())
    }

    fn orgs(&self) -> Result<Vec<(OrgId, u64)>, StoreError> {
        self.query_all(
            "SELECT name, created_at FROM orgs ORDER BY name",
            [],
            |row| Ok((parse_col(row, 0)?, u64_of(row.get(1)?)?)),
        )
    }

    fn create_identity(&self, i: &IdentityRecord) -> Result<(), StoreError> {
        let inserted = self
            .lock()
            .execute(
                "INSERT OR IGNORE INTO identities (role, org, name, token_id, token_digest, \
                 expires_at, created_at, revoked_at, relay_pin) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8)",
                params![
                    i.role.as_str(),
                    org_col(i.org.as_ref()),
                    i.name,
                    i.token_id,
                    i.token_digest,
                    i64_of(i.expires_at)?,
                    i64_of(i.created_at)?,
                    i.relay_pin.as_ref().map(RelayId::as_str),
                ],
            )
            .map_err(backend)?;
        match inserted {
            0 => Err(StoreError::Exists(identity_name(
                i.role,
                i.org.as_ref(),
                &i.name,
            ))),
            _ => Ok(()),
        }
    }

    fn rotate_identity(&self, i: &IdentityRecord) -> Result<(), StoreError> {
        self.execute_one(
            "UPDATE identities SET token_id = ?4, token_digest = ?5, expires_at = ?6, \
             created_at = ?7 WHERE role = ?1 AND org = ?2 AND name = ?3 AND revoked_at IS NULL",
            params![
                i.role.as_str(),
                org_col(i.org.as_ref()),
                i.name,
                i.token_id,
                i.token_digest,
                i64_of(i.expires_at)?,
                i64_of(i.created_at)?,
            ],
            || format!("a live {}", identity_name(i.role, i.org.as_ref(), &i.name)),
        )
    }

    fn identity_by_token(&self, token_id: &str) -> Result<Option<IdentityRecord>, StoreError> {
        self.query_one(
            &format!("SELECT {IDENTITY_COLS} FROM identities WHERE token_id = ?1"),
            params![token_id],
            identity_row,
        )
    }

    fn identity(
        &self,
        role: Role,
        org: Option<&OrgId>,
        name: &str,
    ) -> Result<Option<IdentityRecord>, StoreError> {
        self.query_one(
            &format!(
                "SELECT {IDENTITY_COLS} FROM identities WHERE role = ?1 AND org = ?2 AND name = ?3"
            ),
            params![role.as_str(), org_col(org), name],
            identity_row,
        )
    }

    fn revoke(
        &self,
        role: Role,
        org: Option<&OrgId>,
        name: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        self.execute_one(
            "UPDATE identities SET revoked_at = COALESCE(revoked_at, ?4) \
             WHERE role = ?1 AND org = ?2 AND name = ?3",
            params![role.as_str(), org_col(org), name, i64_of(now)?],
            || identity_name(role, org, name),
        )
    }

    fn identities(&self, role: Role) -> Result<Vec<IdentityRecord>, StoreError> {
        self.query_all(
            &format!("SELECT {IDENTITY_COLS} FROM identities WHERE role = ?1 ORDER BY org, name"),
            params![role.as_str()],
            identity_row,
        )
    }

    fn revoked(&self, role: Role, org: Option<&OrgId>) -> Result<Vec<IdentityRecord>, StoreError> {
        let sql = format!(
            "SELECT {IDENTITY_COLS} FROM identities WHERE role = ?1 AND revoked_at IS NOT NULL \
             AND (?2 IS NULL OR org = ?2) ORDER BY org, name"
        );
        self.query_all(
            &sql,
            params![role.as_str(), org.map(OrgId::as_str)],
            identity_row,
        )
    }

    fn put_relay(&self, r: &RelayRecord) -> Result<(), StoreError> {
        let hostnames =
            serde_json::to_string(&r.hostnames).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.lock()
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO relays ({RELAY_COLS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ),
                params![
                    r.name.as_str(),
                    org_col(r.org.as_ref()),
                    r.ssh_address,
                    r.tls_address,
                    hostnames,
                    i64_of(r.registered_at)?,
                    i64_of(r.cert_not_after)?,
                    r.last_heartbeat.map(i64_of).transpose()?,
                    i64_of(r.tunnels)?,
                ],
            )
            .map_err(backend)
            .map(drop)
    }

    fn relay(&self, name: &RelayId) -> Result<Option<RelayRecord>, StoreError> {
        self.query_one(
            &format!("SELECT {RELAY_COLS} FROM relays WHERE name = ?1"),
            params![name.as_str()],
            relay_row,
        )
    }

    fn relays(&self) -> Result<Vec<RelayRecord>, StoreError> {
        self.query_all(
            &format!("SELECT {RELAY_COLS} FROM relays ORDER BY name"),
            [],
            relay_row,
        )
    }

    fn relay_heartbeat(&self, name: &RelayId, now: u64, tunnels: u64) -> Result<(), StoreError> {
        self.execute_one(
            "UPDATE relays SET last_heartbeat = ?2, tunnels = ?3 WHERE name = ?1",
            params![name.as_str(), i64_of(now)?, i64_of(tunnels)?],
            || format!("registered relay {name}"),
        )
    }

    fn put_gateway(&self, g: &GatewayRecord) -> Result<(), StoreError> {
        self.lock()
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO gateways ({GATEWAY_COLS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
                params![
                    g.org.as_str(),
                    g.name.as_str(),
                    g.assigned_relay.as_str(),
                    g.connected_relay.as_ref().map(RelayId::as_str),
                    i64_of(g.registered_at)?,
                    i64_of(g.cert_not_after)?,
                    g.last_heartbeat.map(i64_of).transpose()?,
                ],
            )
            .map_err(backend)
            .map(drop)
    }

    fn gateway(&self, org: &OrgId, name: &GatewayId) -> Result<Option<GatewayRecord>, StoreError> {
        self.query_one(
            &format!("SELECT {GATEWAY_COLS} FROM gateways WHERE org = ?1 AND name = ?2"),
            params![org.as_str(), name.as_str()],
            gateway_row,
        )
    }

    fn gateways(&self) -> Result<Vec<GatewayRecord>, StoreError> {
        self.query_all(
            &format!("SELECT {GATEWAY_COLS} FROM gateways ORDER BY org, name"),
            [],
            gateway_row,
        )
    }

    fn gateway_heartbeat(
        &self,
        org: &OrgId,
        name: &GatewayId,
        connected: Option<&RelayId>,
        now: u64,
    ) -> Result<(), StoreError> {
        self.execute_one(
            "UPDATE gateways SET last_heartbeat = ?3, connected_relay = ?4 \
             WHERE org = ?1 AND name = ?2",
            params![
                org.as_str(),
                name.as_str(),
                i64_of(now)?,
                connected.map(RelayId::as_str)
            ],
            || format!("registered gateway {name} in org {org}"),
        )
    }

    fn record_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT INTO sessions (id, org, gateway, operator, target, relay, issued_at, \
                 not_after) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    s.id,
                    s.org.as_str(),
                    s.gateway.as_str(),
                    s.operator,
                    s.target,
                    s.relay.as_str(),
                    i64_of(s.issued_at)?,
                    i64_of(s.not_after)?,
                ],
            )
            .map_err(backend)
            .map(drop)
    }
}

#[cfg(test)]
mod tests;
