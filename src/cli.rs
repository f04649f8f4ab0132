//! The subcommands other than `serve`: they print for people and for scripts.

use sea_orm::DatabaseConnection;

use crate::{
    api,
    auth::audit,
    config::KeysCommand,
    domain::{NewApiKey, ScopeSet},
    error::AppError,
    store,
};

pub fn print_spec(yaml: bool) {
    let spec = api::spec(yaml);
    // The committed copy must equal this output byte for byte; end with exactly one newline.
    println!("{}", spec.trim_end());
}

pub async fn keys(db: &DatabaseConnection, command: KeysCommand) -> Result<(), AppError> {
    match command {
        KeysCommand::Create {
            name,
            scopes,
            expires_at,
        } => {
            let new_key = NewApiKey {
                name,
                scopes: ScopeSet::new(scopes),
                expires_at,
            };
            let (key, secret) = store::api_keys::create(db, &new_key, None).await?;
            let scopes = &new_key.scopes;
            audit::key_created(&key, "cli");
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
            println!("ID\tPREFIX\tSCOPES\tCREATED\tEXPIRES\tLAST USED\tREVOKED\tNAME");
            let mut after = None;
            loop {
                let page = store::api_keys::list(db, after.as_ref(), 200).await?;
                for key in &page.items {
                    let when = |at: Option<chrono::DateTime<chrono::Utc>>| {
                        at.map_or("-".to_owned(), |at| at.to_rfc3339())
                    };
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        key.id,
                        key.prefix,
                        key.scopes,
                        key.created_at.to_rfc3339(),
                        when(key.expires_at),
                        when(key.last_used_at),
                        when(key.revoked_at),
                        key.name
                    );
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        KeysCommand::Revoke { id } => {
            let key = store::api_keys::revoke(db, id).await?;
            audit::key_revoked(&key, "cli");
            println!("Revoked API key {} ({}).", key.id, key.name);
        }
    }
    Ok(())
}
