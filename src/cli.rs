//! The subcommands other than `serve`: they print for people and for scripts.

use sea_orm::DatabaseConnection;

use crate::{api, config::KeysCommand, domain::ScopeSet, error::AppError, store};

pub fn print_spec(yaml: bool) {
    let spec = api::spec(yaml);
    // The committed copy must equal this output byte for byte; end with exactly one newline.
    println!("{}", spec.trim_end());
}

pub async fn keys(db: &DatabaseConnection, command: KeysCommand) -> Result<(), AppError> {
    match command {
        KeysCommand::Create { name, scopes } => {
            let scopes = ScopeSet::new(scopes);
            let (key, secret) = store::api_keys::create(db, &name, &scopes).await?;
            println!(
                "Created API key {} ({}) with scopes: {}. Store it now; it is not shown again:",
                key.id,
                key.name,
                scopes.to_stored()
            );
            // Last line, alone, so scripts can take it with `tail -n 1`.
            println!("{}", secret.plaintext());
        }
        KeysCommand::List => {
            println!(
                "{:>6}  {:<12}  {:<30}  {:<25}  {:<20}  NAME",
                "ID", "PREFIX", "SCOPES", "CREATED", "REVOKED"
            );
            for key in store::api_keys::list(db).await? {
                let revoked = key.revoked_at.map_or("-".to_owned(), |at| at.to_rfc3339());
                println!(
                    "{:>6}  {:<12}  {:<30}  {:<25}  {:<20}  {}",
                    key.id,
                    key.prefix,
                    key.scopes,
                    key.created_at.to_rfc3339(),
                    revoked,
                    key.name
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let key = store::api_keys::revoke(db, id).await?;
            tracing::info!(key_id = key.id, key_prefix = %key.prefix, "API key revoked");
            println!("Revoked API key {} ({}).", key.id, key.name);
        }
    }
    Ok(())
}
