//! The subcommands other than `serve`: they print for people and for scripts.

use std::io::{self, Write};

use crate::{
    config::KeysCommand, domain::NewApiKey, domain::ScopeSet, error::AppError, http,
    service::Service,
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
    let spec = http::spec(yaml);
    // The committed copy must equal this output byte for byte; end with exactly one newline.
    writeln!(out, "{}", spec.trim_end())?;
    Ok(out.flush()?)
}

pub async fn keys(
    service: &Service,
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
            let (key, secret) = service.create_api_key_as_operator(new_key, "cli").await?;
            let shown = writeln!(
                out,
                "Created API key {} ({}) with scopes: {}. Store it now; it is not shown again:",
                key.id, key.name, key.scopes
            )
            // Last line, alone, so scripts can take it with `tail -n 1`.
            .and_then(|()| writeln!(out, "{}", secret.plaintext()))
            .and_then(|()| out.flush());
            shown.map_err(|source| CliError::SecretNotShown { id: key.id, source })?;
        }
        KeysCommand::List => {
            writeln!(
                out,
                "ID\tPREFIX\tSCOPES\tCREATED\tEXPIRES\tLAST USED*\tREVOKED\tNAME"
            )?;
            let when = |at: Option<chrono::DateTime<chrono::Utc>>| {
                at.map_or("-".to_owned(), |at| at.to_rfc3339())
            };
            let mut after = None;
            loop {
                let page = service.list_api_keys_as_operator(after.as_ref()).await?;
                for key in &page.items {
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
            writeln!(
                out,
                "* as running servers last recorded it: they write uses every \
                 --key-usage-flush-secs (60 s by default) and when they stop"
            )?;
        }
        KeysCommand::Revoke { id } => {
            let key = service.revoke_api_key_as_operator(id).await?;
            writeln!(out, "Revoked API key {} ({}).", key.id, key.name)?;
        }
    }
    Ok(out.flush()?)
}
