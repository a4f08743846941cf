//! Runs one PostgreSQL listener from a TOML file holding `[[listeners]]` entries (the
//! first is used), for trying Quartet's SQL proxy by hand:
//!
//! ```text
//! cargo run -p quartet-sql --example pgproxy -- sql.toml
//! ```

use quartet_sql::{PgListener, SqlContext, SqlSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: pgproxy CONFIG.toml")?;
    let spec: SqlSpec = toml::from_str(&std::fs::read_to_string(path)?)?;
    let listener = spec
        .listeners
        .into_iter()
        .next()
        .ok_or("no [[listeners]]")?;
    let listener = PgListener::bind(listener, SqlContext::default()).await?;
    println!("listening on {}", listener.local_addr());
    listener
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
