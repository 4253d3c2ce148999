//! A scratch schema or database for tests and benchmarks, dropped when its guard is:
//! the one guard the PostgreSQL suite and the multi-node tests share.

use sqlx::Connection as _;

/// What the scratch place is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Schema,
    Database,
}

/// A scratch schema or database, dropped (with everything in it) when this is dropped.
#[derive(Debug)]
pub struct Scratch {
    admin_url: String,
    name: String,
    kind: Kind,
}

/// `sotto_<what>_<pid>_<16 random hex digits>`: unique across concurrent test processes.
fn unique_name(what: &str) -> Result<String, String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| format!("no OS random source: {e}"))?;
    Ok(format!(
        "sotto_{what}_{}_{}",
        std::process::id(),
        sotto_proto::ids::to_hex(&bytes)
    ))
}

impl Scratch {
    /// A fresh schema name in the database at `url` (the store creates the schema when
    /// it connects with [`crate::PostgresOptions::schema`] set to [`Scratch::name`]).
    pub fn schema(url: &str) -> Result<Self, String> {
        Ok(Self {
            admin_url: url.to_owned(),
            name: unique_name("test")?,
            kind: Kind::Schema,
        })
    }

    /// Creates a fresh database through the server at `admin_url` (any database there
    /// the user may connect to); answers the guard and the new database's URL.
    pub async fn database(admin_url: &str) -> Result<(Self, String), sqlx::Error> {
        let mut admin = sqlx::PgConnection::connect(admin_url).await?;
        let name = unique_name("scratch").map_err(sqlx::Error::Protocol)?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        let url = format!("{base}/{name}");
        Ok((
            Self {
                admin_url: admin_url.to_owned(),
                name,
                kind: Kind::Database,
            },
            url,
        ))
    }

    /// The schema's or database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (url, name, kind) = (self.admin_url.clone(), self.name.clone(), self.kind);
        let statement = match kind {
            Kind::Schema => format!("DROP SCHEMA IF EXISTS {name} CASCADE"),
            Kind::Database => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        };
        // The caller's runtime may be shutting down: drop on a runtime of our own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::raw_sql(&statement).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}
