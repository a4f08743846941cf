//! The identity store: domains, projects, users, roles, role assignments and revocation
//! events in SQL, through sqlx's `Any` driver so one set of migrations and queries serves
//! SQLite, PostgreSQL and MySQL/MariaDB. Queries are checked at run time (no database at
//! build time) and written with `?` placeholders, rewritten to `$n` for PostgreSQL.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use futures_util::future::BoxFuture;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyPool, Row};

use crate::error::StoreError;

const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "identity",
    include_str!("../migrations/0001_identity.sql"),
)];

/// The embedded migrations, for sqlx's migrator.
#[derive(Debug)]
struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, name, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*name),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

/// The cost of password hashing (Argon2id). The default follows OWASP's minimum
/// (19 MiB, 2 passes); tests use a cheap one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl HashCost {
    /// For tests only: fast, and weak.
    pub const CHEAP: HashCost = HashCost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn argon2(self) -> Result<Argon2<'static>, StoreError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| StoreError::Hash(e.into()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    pub id: String,
    pub name: String,
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    pub enabled: bool,
    pub default_project_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Role {
    pub id: String,
    pub name: String,
}

/// What a role is granted on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Project(String),
    Domain(String),
    System,
}

impl Target {
    fn columns(&self) -> (&'static str, &str) {
        match self {
            Target::Project(id) => ("project", id),
            Target::Domain(id) => ("domain", id),
            Target::System => ("system", "all"),
        }
    }
}

/// A revocation: tokens whose first audit id is `audit_id` are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub audit_id: String,
    pub user_id: Option<String>,
    /// Microseconds since the epoch, the order in which instances read them.
    pub revoked_at: i64,
    pub expires_at: Option<SystemTime>,
}

/// A user together with the names a token needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserWithDomain {
    pub user: User,
    pub domain: Domain,
}

/// The identity store over a connection pool.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    cost: HashCost,
}

pub(crate) fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

pub(crate) fn from_micros(m: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(m).unwrap_or(0))
}

/// A new Keystone-style id: a UUID4 in hex, no dashes.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn db_url(url: &str) -> Cow<'_, str> {
    // SQLite: create the file when it is missing, as "created and migrated on start" says.
    if url.starts_with("sqlite:") && !url.contains("mode=") && !url.contains(":memory:") {
        let sep = if url.contains('?') { '&' } else { '?' };
        return Cow::Owned(format!("{url}{sep}mode=rwc"));
    }
    Cow::Borrowed(url)
}

impl Store {
    /// Connects (creating a SQLite file if needed) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, HashCost::default()).await
    }

    pub async fn connect_with(url: &str, cost: HashCost) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("postgres") {
            Dialect::Postgres
        } else if url.starts_with("mysql") || url.starts_with("mariadb") {
            Dialect::Mysql
        } else {
            Dialect::Sqlite
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            .connect(&db_url(url))
            .await?;
        let store = Self {
            pool,
            dialect,
            cost,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations not applied yet (safe to run from many instances at once:
    /// sqlx takes a lock on PostgreSQL and MySQL).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = Migrator::new(Embedded).await?;
        migrator.run(&self.pool).await?;
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn sql<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.dialect != Dialect::Postgres {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len() + 8);
        let mut n = 0;
        for c in text.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }

    fn conflict_or(err: sqlx::Error, kind: &'static str, name: &str) -> StoreError {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict {
                kind,
                name: name.to_owned(),
            },
            _ => StoreError::Database(err),
        }
    }

    /// Whether the store holds no user at all (then the gateway bootstraps it).
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        let sql = self.sql("SELECT COUNT(*) AS n FROM identity_user");
        let row = sqlx::query(&sql).fetch_one(&self.pool).await?;
        Ok(row.try_get::<i64, _>("n")? == 0)
    }

    // ---- domains

    pub async fn create_domain(&self, id: Option<&str>, name: &str) -> Result<Domain, StoreError> {
        let domain = Domain {
            id: id.map_or_else(new_id, str::to_owned),
            name: name.to_owned(),
            enabled: true,
        };
        let sql = self.sql(
            "INSERT INTO identity_domain (id, name, enabled, description, created_at) VALUES (?, ?, 1, '', ?)",
        );
        sqlx::query(&sql)
            .bind(domain.id.clone())
            .bind(domain.name.clone())
            .bind(micros(SystemTime::now()))
            .execute(&self.pool)
            .await
            .map_err(|e| Self::conflict_or(e, "domain", name))?;
        Ok(domain)
    }

    fn domain_row(row: &AnyRow) -> Result<Domain, sqlx::Error> {
        Ok(Domain {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            enabled: row.try_get::<i64, _>("enabled")? != 0,
        })
    }

    pub async fn domain(&self, id: &str) -> Result<Domain, StoreError> {
        let sql = self.sql("SELECT id, name, enabled FROM identity_domain WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Self::domain_row(&row)?),
            None => Err(not_found("domain", id)),
        }
    }

    pub async fn domain_by_name(&self, name: &str) -> Result<Domain, StoreError> {
        let sql = self.sql("SELECT id, name, enabled FROM identity_domain WHERE name = ?");
        let row = sqlx::query(&sql)
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Self::domain_row(&row)?),
            None => Err(not_found("domain", name)),
        }
    }

    // ---- projects

    pub async fn create_project(
        &self,
        id: Option<&str>,
        name: &str,
        domain_id: &str,
    ) -> Result<Project, StoreError> {
        let project = Project {
            id: id.map_or_else(new_id, str::to_owned),
            name: name.to_owned(),
            domain_id: domain_id.to_owned(),
            enabled: true,
        };
        let sql = self.sql(
            "INSERT INTO identity_project (id, name, domain_id, enabled, description, created_at) VALUES (?, ?, ?, 1, '', ?)",
        );
        sqlx::query(&sql)
            .bind(project.id.clone())
            .bind(project.name.clone())
            .bind(project.domain_id.clone())
            .bind(micros(SystemTime::now()))
            .execute(&self.pool)
            .await
            .map_err(|e| Self::conflict_or(e, "project", name))?;
        Ok(project)
    }

    fn project_row(row: &AnyRow) -> Result<Project, sqlx::Error> {
        Ok(Project {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            domain_id: row.try_get("domain_id")?,
            enabled: row.try_get::<i64, _>("enabled")? != 0,
        })
    }

    pub async fn project(&self, id: &str) -> Result<Project, StoreError> {
        let sql =
            self.sql("SELECT id, name, domain_id, enabled FROM identity_project WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Self::project_row(&row)?),
            None => Err(not_found("project", id)),
        }
    }

    pub async fn project_by_name(
        &self,
        domain_id: &str,
        name: &str,
    ) -> Result<Project, StoreError> {
        let sql = self.sql(
            "SELECT id, name, domain_id, enabled FROM identity_project WHERE domain_id = ? AND name = ?",
        );
        let row = sqlx::query(&sql)
            .bind(domain_id.to_owned())
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Self::project_row(&row)?),
            None => Err(not_found("project", name)),
        }
    }

    // ---- users

    async fn hash(&self, password: &str) -> Result<String, StoreError> {
        let password = password.to_owned();
        let argon2 = self.cost.argon2()?;
        tokio::task::spawn_blocking(move || {
            let mut salt = [0u8; 16];
            rand::Rng::fill(&mut rand::rng(), &mut salt[..]);
            let salt = SaltString::encode_b64(&salt).map_err(StoreError::Hash)?;
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(StoreError::Hash)
        })
        .await?
    }

    pub async fn create_user(
        &self,
        id: Option<&str>,
        name: &str,
        domain_id: &str,
        password: Option<&str>,
    ) -> Result<User, StoreError> {
        let user = User {
            id: id.map_or_else(new_id, str::to_owned),
            name: name.to_owned(),
            domain_id: domain_id.to_owned(),
            enabled: true,
            default_project_id: None,
        };
        let hash = match password {
            Some(p) => Some(self.hash(p).await?),
            None => None,
        };
        let sql = self.sql(
            "INSERT INTO identity_user (id, name, domain_id, password_hash, enabled, default_project_id, created_at) VALUES (?, ?, ?, ?, 1, NULL, ?)",
        );
        sqlx::query(&sql)
            .bind(user.id.clone())
            .bind(user.name.clone())
            .bind(user.domain_id.clone())
            .bind(hash)
            .bind(micros(SystemTime::now()))
            .execute(&self.pool)
            .await
            .map_err(|e| Self::conflict_or(e, "user", name))?;
        Ok(user)
    }

    pub async fn set_password(&self, user_id: &str, password: &str) -> Result<(), StoreError> {
        let hash = self.hash(password).await?;
        let sql = self.sql("UPDATE identity_user SET password_hash = ? WHERE id = ?");
        let done = sqlx::query(&sql)
            .bind(hash)
            .bind(user_id.to_owned())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("user", user_id));
        }
        Ok(())
    }

    pub async fn set_user_enabled(&self, user_id: &str, enabled: bool) -> Result<(), StoreError> {
        let sql = self.sql("UPDATE identity_user SET enabled = ? WHERE id = ?");
        let done = sqlx::query(&sql)
            .bind(i64::from(enabled))
            .bind(user_id.to_owned())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("user", user_id));
        }
        Ok(())
    }

    fn user_row(row: &AnyRow) -> Result<User, sqlx::Error> {
        Ok(User {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            domain_id: row.try_get("domain_id")?,
            enabled: row.try_get::<i64, _>("enabled")? != 0,
            default_project_id: row.try_get("default_project_id")?,
        })
    }

    const USER_COLUMNS: &'static str = "id, name, domain_id, enabled, default_project_id";

    pub async fn user(&self, id: &str) -> Result<User, StoreError> {
        let sql = self
            .sql(&format!(
                "SELECT {} FROM identity_user WHERE id = ?",
                Self::USER_COLUMNS
            ))
            .into_owned();
        let row = sqlx::query(&sql)
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Self::user_row(&row)?),
            None => Err(not_found("user", id)),
        }
    }

    pub async fn user_by_name(&self, domain_id: &str, name: &str) -> Result<User, StoreError> {
        let sql = self
            .sql(&format!(
                "SELECT {} FROM identity_user WHERE domain_id = ? AND name = ?",
                Self::USER_COLUMNS
            ))
            .into_owned();
        let row = sqlx::query(&sql)
            .bind(domain_id.to_owned())
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Self::user_row(&row)?),
            None => Err(not_found("user", name)),
        }
    }

    /// Whether `password` is the user's password. A user without a password, or an
    /// unreadable hash, never matches.
    pub async fn check_password(&self, user_id: &str, password: &str) -> Result<bool, StoreError> {
        let sql = self.sql("SELECT password_hash FROM identity_user WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(user_id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let Some(hash) = row.try_get::<Option<String>, _>("password_hash")? else {
            return Ok(false);
        };
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await?;
        Ok(ok)
    }

    /// Spends the time of one password check and fails: answering "unknown user" faster
    /// than "wrong password" would tell an attacker which user names exist.
    pub async fn check_no_password(&self, password: &str) -> Result<bool, StoreError> {
        let cost = self.cost;
        let dummy = format!(
            "$argon2id$v=19$m={},t={},p={}$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            cost.memory_kib, cost.iterations, cost.parallelism
        );
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || {
            if let Ok(parsed) = PasswordHash::new(&dummy) {
                let _ = Argon2::default().verify_password(password.as_bytes(), &parsed);
            }
        })
        .await?;
        Ok(false)
    }

    // ---- roles

    pub async fn create_role(&self, id: Option<&str>, name: &str) -> Result<Role, StoreError> {
        let role = Role {
            id: id.map_or_else(new_id, str::to_owned),
            name: name.to_owned(),
        };
        let sql = self.sql("INSERT INTO identity_role (id, name, created_at) VALUES (?, ?, ?)");
        sqlx::query(&sql)
            .bind(role.id.clone())
            .bind(role.name.clone())
            .bind(micros(SystemTime::now()))
            .execute(&self.pool)
            .await
            .map_err(|e| Self::conflict_or(e, "role", name))?;
        Ok(role)
    }

    pub async fn role_by_name(&self, name: &str) -> Result<Role, StoreError> {
        let sql = self.sql("SELECT id, name FROM identity_role WHERE name = ?");
        let row = sqlx::query(&sql)
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Role {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
            }),
            None => Err(not_found("role", name)),
        }
    }

    /// `prior` implies `implied` (Keystone's implied roles: admin implies manager, ...).
    pub async fn imply_role(&self, prior_id: &str, implied_id: &str) -> Result<(), StoreError> {
        let sql = self.sql(
            "INSERT INTO identity_implied_role (prior_role_id, implied_role_id) VALUES (?, ?)",
        );
        match sqlx::query(&sql)
            .bind(prior_id.to_owned())
            .bind(implied_id.to_owned())
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Grants a role to a user on a target; granting twice is not an error.
    pub async fn grant(
        &self,
        user_id: &str,
        target: &Target,
        role_id: &str,
    ) -> Result<(), StoreError> {
        let (kind, id) = target.columns();
        let sql = self.sql(
            "INSERT INTO identity_assignment (user_id, target_type, target_id, role_id, created_at) VALUES (?, ?, ?, ?, ?)",
        );
        match sqlx::query(&sql)
            .bind(user_id.to_owned())
            .bind(kind)
            .bind(id.to_owned())
            .bind(role_id.to_owned())
            .bind(micros(SystemTime::now()))
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn revoke_grant(
        &self,
        user_id: &str,
        target: &Target,
        role_id: &str,
    ) -> Result<(), StoreError> {
        let (kind, id) = target.columns();
        let sql = self.sql(
            "DELETE FROM identity_assignment WHERE user_id = ? AND target_type = ? AND target_id = ? AND role_id = ?",
        );
        sqlx::query(&sql)
            .bind(user_id.to_owned())
            .bind(kind)
            .bind(id.to_owned())
            .bind(role_id.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The user's effective roles on a target: direct grants plus the roles they imply,
    /// sorted by name.
    pub async fn roles(&self, user_id: &str, target: &Target) -> Result<Vec<Role>, StoreError> {
        let (kind, id) = target.columns();
        let sql = self.sql(
            "SELECT r.id AS id, r.name AS name FROM identity_assignment a JOIN identity_role r ON r.id = a.role_id WHERE a.user_id = ? AND a.target_type = ? AND a.target_id = ?",
        );
        let rows = sqlx::query(&sql)
            .bind(user_id.to_owned())
            .bind(kind)
            .bind(id.to_owned())
            .fetch_all(&self.pool)
            .await?;
        let mut roles = BTreeSet::new();
        for row in rows {
            roles.insert(Role {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
            });
        }
        if roles.is_empty() {
            return Ok(Vec::new());
        }
        let sql = self.sql(
            "SELECT i.prior_role_id AS prior, r.id AS id, r.name AS name FROM identity_implied_role i JOIN identity_role r ON r.id = i.implied_role_id",
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        let mut implied = Vec::new();
        for row in rows {
            let prior: String = row.try_get("prior")?;
            implied.push((
                prior,
                Role {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                },
            ));
        }
        // Closure over implications (a chain admin -> manager -> member -> reader).
        loop {
            let before = roles.len();
            let ids: BTreeSet<String> = roles.iter().map(|r| r.id.clone()).collect();
            for (prior, role) in &implied {
                if ids.contains(prior) {
                    roles.insert(role.clone());
                }
            }
            if roles.len() == before {
                break;
            }
        }
        let mut roles: Vec<Role> = roles.into_iter().collect();
        roles.sort_by(|a, b| a.name.cmp(&b.name));
        roles.dedup_by(|a, b| a.id == b.id);
        Ok(roles)
    }

    // ---- revocation

    /// Records a revocation event for an audit id.
    pub async fn revoke(
        &self,
        audit_id: &str,
        user_id: Option<&str>,
        expires_at: Option<SystemTime>,
    ) -> Result<Revocation, StoreError> {
        let now = micros(SystemTime::now());
        let sql = self.sql(
            "INSERT INTO identity_revocation (id, audit_id, user_id, issued_before, expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?)",
        );
        sqlx::query(&sql)
            .bind(new_id())
            .bind(audit_id.to_owned())
            .bind(user_id.map(str::to_owned))
            .bind(now)
            .bind(expires_at.map(micros))
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(Revocation {
            audit_id: audit_id.to_owned(),
            user_id: user_id.map(str::to_owned),
            revoked_at: now,
            expires_at,
        })
    }

    /// Revocations recorded at or after `since` (microseconds), oldest first.
    pub async fn revocations_since(&self, since: i64) -> Result<Vec<Revocation>, StoreError> {
        let sql = self.sql(
            "SELECT audit_id, user_id, expires_at, revoked_at FROM identity_revocation WHERE revoked_at >= ? ORDER BY revoked_at",
        );
        let rows = sqlx::query(&sql).bind(since).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(Revocation {
                    audit_id: row.try_get("audit_id")?,
                    user_id: row.try_get("user_id")?,
                    expires_at: row
                        .try_get::<Option<i64>, _>("expires_at")?
                        .map(from_micros),
                    revoked_at: row.try_get("revoked_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Whether an audit id was revoked (asked of the database, not of any local copy).
    pub async fn is_revoked(&self, audit_id: &str) -> Result<bool, StoreError> {
        let sql = self.sql("SELECT COUNT(*) AS n FROM identity_revocation WHERE audit_id = ?");
        let row = sqlx::query(&sql)
            .bind(audit_id.to_owned())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// Deletes revocation events of tokens that have expired anyway.
    pub async fn purge_revocations(&self, now: SystemTime) -> Result<u64, StoreError> {
        let sql = self
            .sql("DELETE FROM identity_revocation WHERE expires_at IS NOT NULL AND expires_at < ?");
        let done = sqlx::query(&sql)
            .bind(micros(now))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

fn not_found(kind: &'static str, name: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        name: name.to_owned(),
    }
}
