//! The API-key use cases: over HTTP for principals with `admin`, and for the operator at the
//! machine (the `keys` commands, the first start's key), who needs no credentials. Every
//! creation and revocation is logged as a structured event, one shape wherever it happens, so
//! one log search finds them all; secrets and hashes never appear.

use entity::api_keys::Model;

use super::{Service, authorize};
use crate::{
    domain::{ApiKeySecret, Cursor, ListQuery, NewApiKey, Principal, Scope, Subject},
    error::AppError,
    store::Page,
};

/// A key's metadata as it is shown: its stored row, with `last_used_at` including uses not yet
/// written.
pub type ApiKeyView = Model;

impl Service {
    /// Creates a key for `principal`, which cannot hand out scopes it lacks. The secret is in
    /// the result, this once.
    pub async fn create_api_key(
        &self,
        principal: &Principal,
        new_key: NewApiKey,
    ) -> Result<(ApiKeyView, ApiKeySecret), AppError> {
        authorize(principal, Scope::Admin)?;
        if !principal.scopes.covers(&new_key.scopes) {
            return Err(AppError::Validation(vec![crate::domain::FieldError::new(
                "/scopes",
                "cannot grant scopes the caller does not hold",
            )]));
        }
        let actor = principal.audit_name();
        self.create_key(&new_key, Some(actor.clone()), &actor).await
    }

    /// Creates a key for the operator; `actor` says how (`cli`, `bootstrap`).
    pub async fn create_api_key_as_operator(
        &self,
        new_key: NewApiKey,
        actor: &str,
    ) -> Result<(ApiKeyView, ApiKeySecret), AppError> {
        self.create_key(&new_key, None, actor).await
    }

    async fn create_key(
        &self,
        new_key: &NewApiKey,
        created_by: Option<String>,
        actor: &str,
    ) -> Result<(ApiKeyView, ApiKeySecret), AppError> {
        let (key, secret) = self.store.create_api_key(new_key, created_by).await?;
        tracing::info!(
            event = "api_key.created",
            key_id = key.id,
            key_prefix = %key.prefix,
            scopes = %key.scopes,
            actor,
            "API key created"
        );
        Ok((key, secret))
    }

    /// Whether any key exists (a first start mints one when none does).
    pub async fn any_api_key(&self) -> Result<bool, AppError> {
        Ok(self.store.count_api_keys().await? > 0)
    }

    /// Keys in id order, revoked ones included, `limit` at a time after `cursor`.
    pub async fn list_api_keys(
        &self,
        principal: &Principal,
        cursor: Option<&str>,
        limit: u64,
    ) -> Result<Page<ApiKeyView>, AppError> {
        authorize(principal, Scope::Admin)?;
        let after = cursor
            .map(|raw| Cursor::parse(raw, &ListQuery::default()))
            .transpose()
            .map_err(AppError::BadParameter)?;
        self.list_keys(after.as_ref(), limit).await
    }

    /// Every key, a page at a time, for the operator.
    pub async fn list_api_keys_as_operator(
        &self,
        after: Option<&Cursor>,
    ) -> Result<Page<ApiKeyView>, AppError> {
        self.list_keys(after, 200).await
    }

    async fn list_keys(
        &self,
        after: Option<&Cursor>,
        limit: u64,
    ) -> Result<Page<ApiKeyView>, AppError> {
        let mut page = self.store.list_api_keys(after, limit).await?;
        for key in &mut page.items {
            key.last_used_at = self.usage.latest(key.id, key.last_used_at);
        }
        Ok(page)
    }

    /// A live key's metadata; a revoked key is gone (404), though listed.
    pub async fn get_api_key(
        &self,
        principal: &Principal,
        id: i64,
    ) -> Result<ApiKeyView, AppError> {
        authorize(principal, Scope::Admin)?;
        let mut key = self.store.get_api_key(id).await?;
        if key.revoked_at.is_some() {
            return Err(AppError::KeyRevoked { id });
        }
        key.last_used_at = self.usage.latest(key.id, key.last_used_at);
        Ok(key)
    }

    /// Revokes a key (again is fine); it is refused from the next request on, at once here and
    /// within the key cache's TTL elsewhere. A key cannot revoke itself: that would lock its
    /// holder out mid-session, and is done with another admin key, deliberately.
    pub async fn revoke_api_key(&self, principal: &Principal, id: i64) -> Result<(), AppError> {
        authorize(principal, Scope::Admin)?;
        if principal.subject == Subject::ApiKey(id) {
            return Err(AppError::own_key_revoked());
        }
        self.revoke_key(id, &principal.audit_name()).await.map(drop)
    }

    /// Revokes a key for the operator.
    pub async fn revoke_api_key_as_operator(&self, id: i64) -> Result<ApiKeyView, AppError> {
        self.revoke_key(id, "cli").await
    }

    async fn revoke_key(&self, id: i64, actor: &str) -> Result<ApiKeyView, AppError> {
        let key = self.store.revoke_api_key(id).await?;
        self.keys.forget(key.id);
        tracing::info!(
            event = "api_key.revoked",
            key_id = key.id,
            key_prefix = %key.prefix,
            actor,
            "API key revoked"
        );
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::ScopeSet,
        service::Settings,
        store::{Store, tests::settings},
    };

    #[tokio::test]
    async fn keys_are_created_within_the_creators_scopes_and_revoked_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ()) = Store::open(&settings(&dir), async |_| Ok(()))
            .await
            .unwrap();
        let service = Service::new(store, Settings::default()).await;
        let new_key = |scopes: &[Scope]| NewApiKey {
            name: "ci".into(),
            scopes: ScopeSet::new(scopes.iter().copied()),
            expires_at: None,
        };
        let (root, secret) = service
            .create_api_key_as_operator(new_key(&[Scope::Admin]), "cli")
            .await
            .unwrap();
        let admin = service.authenticate(secret.plaintext()).await.unwrap();
        assert_eq!(admin.subject, Subject::ApiKey(root.id));

        let (reader, reader_secret) = service
            .create_api_key(&admin, new_key(&[Scope::UsersRead]))
            .await
            .unwrap();
        assert_eq!(reader.created_by.as_deref(), Some("api-key:1"));
        let reading = service
            .authenticate(reader_secret.plaintext())
            .await
            .unwrap();
        let widened = service
            .create_api_key(&reading, new_key(&[Scope::UsersRead]))
            .await;
        assert!(matches!(widened, Err(AppError::Forbidden { .. })));

        let itself = service.revoke_api_key(&admin, root.id).await;
        assert!(matches!(itself, Err(AppError::Conflict(_))));
        service.revoke_api_key(&admin, reader.id).await.unwrap();
        let refused = service.authenticate(reader_secret.plaintext()).await;
        assert!(matches!(refused, Err(AppError::InvalidToken(_))));
        let gone = service.get_api_key(&admin, reader.id).await;
        assert!(matches!(gone, Err(AppError::KeyRevoked { .. })));
        let listed = service.list_api_keys(&admin, None, 10).await.unwrap();
        assert_eq!(listed.items.len(), 2, "a revoked key stays listed");
        assert!(
            listed.items[0].last_used_at.is_some(),
            "its use is shown before it is written"
        );
    }
}
