//! The subcommands other than `serve`: they print for people and for scripts.

use std::io::{self, Write};

use sea_orm::DatabaseConnection;

use crate::{
    api,
    auth::audit,
    config::KeysCommand,
    domain::{NewApiKey, ScopeSet},
    error::AppError,
    store,
};

/// What a subcommand can fail with: the work itself, or printing its outcome.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("cannot print to standard output: {0}")]
    Output(#[from] io::Error),
    /// Not quiet even on a closed pipe: the key exists, and nobody can ever use it.
    #[error(
        "API key {id} was created, but its secret could not be printed ({source}); \
         revoke it with `users-api keys revoke {id}` and create another"
    )]
    SecretNotShown { id: i64, source: io::Error },
}

impl CliError {
    /// A reader that stopped early (`users-api openapi | head`) closed the pipe on purpose:
    /// the command has said what was wanted, as `cat` or `grep` would have.
    pub fn is_closed_pipe(&self) -> bool {
        matches!(self, Self::Output(err) if err.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Writes, unlike `println!`, return the error of a closed or full standard output instead
/// of panicking on it.
pub fn print_spec(out: &mut impl Write, yaml: bool) -> Result<(), CliError> {
    let spec = api::spec(yaml);
    // The committed copy must equal this output byte for byte; end with exactly one newline.
    writeln!(out, "{}", spec.trim_end())?;
    Ok(out.flush()?)
}

pub async fn keys(
    db: &DatabaseConnection,
    command: KeysCommand,
    out: &mut impl Write,
) -> Result<(), CliError> {
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
            let shown = writeln!(
                out,
                "Created API key {} ({}) with scopes: {}. Store it now; it is not shown again:",
                key.id,
                key.name,
                scopes.to_stored()
            )
            // Last line, alone, so scripts can take it with `tail -n 1`.
            .and_then(|()| writeln!(out, "{}", secret.plaintext()))
            .and_then(|()| out.flush());
            shown.map_err(|source| CliError::SecretNotShown { id: key.id, source })?;
        }
        KeysCommand::List => {
            writeln!(
                out,
                "ID\tPREFIX\tSCOPES\tCREATED\tEXPIRES\tLAST USED\tREVOKED\tNAME"
            )?;
            let mut after = None;
            loop {
                let page = store::api_keys::list(db, after.as_ref(), 200).await?;
                for key in &page.items {
                    let when = |at: Option<chrono::DateTime<chrono::Utc>>| {
                        at.map_or("-".to_owned(), |at| at.to_rfc3339())
                    };
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        key.id,
                        key.prefix,
                        key.scopes,
                        key.created_at.to_rfc3339(),
                        when(key.expires_at),
                        when(key.last_used_at),
                        when(key.revoked_at),
                        key.name
                    )?;
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
            writeln!(out, "Revoked API key {} ({}).", key.id, key.name)?;
        }
    }
    Ok(out.flush()?)
}
