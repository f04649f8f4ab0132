//! The users use cases.

use chrono::{DateTime, Utc};
use entity::users::Model;

use super::{
    Service, authorize,
    cache::{ReadCache, Weight},
};
use crate::{
    domain::{
        Cursor, IfMatch, ListQuery, NewUser, Principal, Scope, Sort, UserChanges, UserFilter,
    },
    error::AppError,
    store::{Page, Recorded, UserWrite, Written, users::Once},
};

/// What a listing asks for, as the client said it.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub limit: u64,
    /// The `next_cursor` of the page before, if any.
    pub cursor: Option<String>,
    pub sort: Sort,
    pub role: Option<String>,
    pub email: Option<String>,
    pub q: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// What makes a create safe to retry: the caller's key, the fingerprint of the body, and how
/// to record the response a retry is given.
pub struct Idempotent {
    pub key: String,
    pub request_hash: String,
    pub record: fn(&Model) -> Recorded,
}

/// A create's outcome.
#[derive(Debug)]
pub enum Created {
    User(Model),
    /// A retry of a create made before under the same `Idempotency-Key`: its response.
    Replayed(Recorded),
}

impl Service {
    /// User `id`, as `render` makes it (kept in `cache` while the database is unchanged).
    pub async fn get_user<V: Clone + Weight>(
        &self,
        principal: &Principal,
        id: i64,
        cache: Option<&ReadCache<i64, V>>,
        render: impl FnOnce(Model) -> V,
    ) -> Result<V, AppError> {
        authorize(principal, Scope::UsersRead)?;
        self.read_through(cache, id, async || {
            Ok(render(self.store.get_user(id).await?))
        })
        .await
    }

    /// A page of users, as `render` makes it (kept in `cache` under `key`, which must name
    /// everything the request asks for, while the database is unchanged). A cursor this API did
    /// not issue for this very query (same filters and sort) is a 400.
    pub async fn list_users<V: Clone + Weight>(
        &self,
        principal: &Principal,
        request: ListRequest,
        cache: Option<&ReadCache<String, V>>,
        key: String,
        render: impl FnOnce(Page<Model>) -> V,
    ) -> Result<V, AppError> {
        authorize(principal, Scope::UsersRead)?;
        self.read_through(cache, key, async || {
            let filter = UserFilter::new(
                request.role,
                request.email.as_deref(),
                request.q.as_deref(),
                request.created_after,
                request.created_before,
            )
            .map_err(AppError::BadParameter)?;
            let query = ListQuery {
                filter,
                sort: request.sort,
            };
            let after = request
                .cursor
                .map(|raw| Cursor::parse(&raw, &query))
                .transpose()
                .map_err(AppError::BadParameter)?;
            let page = self
                .store
                .list_users(&query, after.as_ref(), request.limit)
                .await?;
            Ok(render(page))
        })
        .await
    }

    /// Creates a user, attributed to `principal`. With `idempotent`, once per key and caller:
    /// a retry gets the original response and creates nothing; the same key with another body
    /// is refused.
    pub async fn create_user(
        &self,
        principal: &Principal,
        user: NewUser,
        idempotent: Option<Idempotent>,
    ) -> Result<Created, AppError> {
        authorize(principal, Scope::UsersWrite)?;
        let once = idempotent.map(|idempotent| Once {
            key: idempotent.key,
            request_hash: idempotent.request_hash,
            ttl: self.settings.idempotency_ttl,
            record: idempotent.record,
        });
        let write = UserWrite::Create(user, once);
        match self.store.write_user(write, principal.audit_name()).await? {
            Written::User(model) => Ok(Created::User(model)),
            Written::Replayed(recorded) => Ok(Created::Replayed(recorded)),
        }
    }

    /// Sets every writable field of user `id`: an absent email removes the address.
    pub async fn replace_user(
        &self,
        principal: &Principal,
        id: i64,
        user: NewUser,
        if_match: IfMatch,
    ) -> Result<Model, AppError> {
        self.update_user(principal, id, user.into(), if_match).await
    }

    /// Changes the fields `changes` names, if `if_match` holds.
    pub async fn update_user(
        &self,
        principal: &Principal,
        id: i64,
        changes: UserChanges,
        if_match: IfMatch,
    ) -> Result<Model, AppError> {
        authorize(principal, Scope::UsersWrite)?;
        let write = UserWrite::Update {
            id,
            changes,
            expected_version: self.expected_version(if_match)?,
        };
        self.write_one(write, principal).await
    }

    /// Deletes user `id`, if `if_match` holds; the user as it was.
    pub async fn delete_user(
        &self,
        principal: &Principal,
        id: i64,
        if_match: IfMatch,
    ) -> Result<Model, AppError> {
        authorize(principal, Scope::UsersWrite)?;
        let write = UserWrite::Delete {
            id,
            expected_version: self.expected_version(if_match)?,
        };
        self.write_one(write, principal).await
    }

    async fn write_one(&self, write: UserWrite, principal: &Principal) -> Result<Model, AppError> {
        match self.store.write_user(write, principal.audit_name()).await? {
            Written::User(model) => Ok(model),
            Written::Replayed(_) => unreachable!("only idempotent creates replay"),
        }
    }

    /// The version a write must find: `None` for an unconditional write (no `If-Match`, or
    /// `*`, which only needs the user to exist).
    fn expected_version(&self, if_match: IfMatch) -> Result<Option<i64>, AppError> {
        match if_match {
            IfMatch::Absent if self.settings.require_if_match => {
                Err(AppError::PreconditionRequired)
            }
            IfMatch::Absent | IfMatch::Any => Ok(None),
            IfMatch::Version(version) => Ok(Some(version)),
            IfMatch::Never => Err(AppError::PreconditionFailed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        domain::{Email, Role, ScopeSet, Subject, UserName},
        service::Settings,
        store::{Store, tests::settings},
    };

    async fn service(dir: &tempfile::TempDir, settings_of: Settings) -> Arc<Service> {
        let db = settings(dir);
        let (store, ()) = Store::open(&db, async |_| Ok(())).await.unwrap();
        let store = store.serve(&db).await.unwrap();
        Arc::new(Service::new(store, settings_of).await)
    }

    fn principal(scopes: &[Scope]) -> Principal {
        Principal {
            subject: Subject::ApiKey(7),
            scopes: ScopeSet::new(scopes.iter().copied()),
        }
    }

    fn user(name: &str, email: Option<&str>) -> NewUser {
        NewUser {
            name: UserName::parse(name).unwrap(),
            role: Role::parse("Dev").unwrap(),
            email: email.map(|email| Email::parse(email).unwrap()),
        }
    }

    fn created(outcome: Created) -> Model {
        match outcome {
            Created::User(model) => model,
            Created::Replayed(_) => panic!("not a new user"),
        }
    }

    #[tokio::test]
    async fn writes_are_audited_and_conditional_on_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(&dir, Settings::default()).await;
        let writer = principal(&[Scope::UsersWrite, Scope::UsersRead]);
        let ann = created(
            service
                .create_user(&writer, user("Ann", Some("ann@example.org")), None)
                .await
                .unwrap(),
        );
        assert_eq!(ann.created_by.as_deref(), Some("api-key:7"));
        assert_eq!(ann.version, 1);

        let rename = |name: &str| UserChanges {
            name: Some(UserName::parse(name).unwrap()),
            ..UserChanges::default()
        };
        let renamed = service
            .update_user(&writer, ann.id, rename("Anna"), IfMatch::Version(1))
            .await
            .unwrap();
        assert_eq!((renamed.name.as_str(), renamed.version), ("Anna", 2));
        let stale = service
            .update_user(&writer, ann.id, rename("Annie"), IfMatch::Version(1))
            .await;
        assert!(matches!(stale, Err(AppError::PreconditionFailed)));
        let never = service.delete_user(&writer, ann.id, IfMatch::Never).await;
        assert!(matches!(never, Err(AppError::PreconditionFailed)));

        // A replace clears what it does not set.
        let replaced = service
            .replace_user(&writer, ann.id, user("Ann", None), IfMatch::Any)
            .await
            .unwrap();
        assert_eq!(replaced.email, None);
        let clash = service
            .create_user(&writer, user("Bob", Some("ANN@example.org")), None)
            .await;
        assert!(clash.is_ok(), "the address was freed by the replace");
        let deleted = service
            .delete_user(&writer, ann.id, IfMatch::Absent)
            .await
            .unwrap();
        assert_eq!(deleted.id, ann.id);
        let gone = service.get_user(&writer, ann.id, None, |m| m.id).await;
        assert!(matches!(gone, Err(AppError::NotFound { .. })));
    }

    #[tokio::test]
    async fn every_use_case_checks_the_callers_scope() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(&dir, Settings::default()).await;
        let reader = principal(&[Scope::UsersRead]);
        let forbidden = |result: Result<(), AppError>| {
            assert!(
                matches!(
                    result,
                    Err(AppError::Forbidden {
                        needed: Scope::UsersWrite
                    })
                ),
                "{result:?}"
            )
        };
        forbidden(
            service
                .create_user(&reader, user("A", None), None)
                .await
                .map(drop),
        );
        forbidden(
            service
                .update_user(&reader, 1, UserChanges::default(), IfMatch::Absent)
                .await
                .map(drop),
        );
        forbidden(
            service
                .delete_user(&reader, 1, IfMatch::Absent)
                .await
                .map(drop),
        );
        let nobody = principal(&[]);
        let listed = service
            .list_users(&nobody, ListRequest::default(), None, String::new(), |_| {
                0_i64
            })
            .await;
        assert!(matches!(
            listed,
            Err(AppError::Forbidden {
                needed: Scope::UsersRead
            })
        ));
    }

    #[tokio::test]
    async fn if_match_can_be_required() {
        let dir = tempfile::tempdir().unwrap();
        let strict = Settings {
            require_if_match: true,
            ..Settings::default()
        };
        let service = service(&dir, strict).await;
        let writer = principal(&[Scope::UsersWrite]);
        let id = created(
            service
                .create_user(&writer, user("A", None), None)
                .await
                .unwrap(),
        )
        .id;
        let unconditional = service
            .update_user(&writer, id, UserChanges::default(), IfMatch::Absent)
            .await;
        assert!(matches!(unconditional, Err(AppError::PreconditionRequired)));
        assert!(service.delete_user(&writer, id, IfMatch::Any).await.is_ok());
    }

    fn recorded(model: &Model) -> Recorded {
        Recorded {
            status: 201,
            body: format!("user {}", model.id),
            location: None,
            etag: None,
        }
    }

    #[tokio::test]
    async fn a_retried_idempotent_create_replays_and_a_failed_one_keeps_its_key_free() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(&dir, Settings::default()).await;
        let writer = principal(&[Scope::UsersWrite]);
        let once = |hash: &str| {
            Some(Idempotent {
                key: "k1".into(),
                request_hash: hash.into(),
                record: recorded,
            })
        };
        let first = created(
            service
                .create_user(&writer, user("Ann", Some("ann@example.org")), once("h"))
                .await
                .unwrap(),
        );
        match service
            .create_user(&writer, user("Ann", None), once("h"))
            .await
        {
            Ok(Created::Replayed(replayed)) => {
                assert_eq!(replayed.body, format!("user {}", first.id))
            }
            other => panic!("{other:?}"),
        }
        let reused = service
            .create_user(&writer, user("Bob", None), once("other"))
            .await;
        assert!(matches!(reused, Err(AppError::IdempotencyKeyReused)));

        // Another caller's key of the same name is its own.
        let other = Principal {
            subject: Subject::ApiKey(8),
            ..principal(&[Scope::UsersWrite])
        };
        let taken = service
            .create_user(&other, user("Cy", Some("ANN@example.org")), once("h"))
            .await;
        assert!(matches!(taken, Err(AppError::Conflict(_))));
        // The failed create kept nothing: the key is free for a corrected body.
        let fixed = service
            .create_user(&other, user("Cy", Some("cy@example.org")), once("h2"))
            .await
            .unwrap();
        assert!(matches!(fixed, Created::User(_)));
    }

    /// A cached read is the stored one: any commit, through the service or around it, makes
    /// the next read read again.
    #[tokio::test]
    async fn cached_reads_follow_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(&dir, Settings::default()).await;
        let admin = principal(&[Scope::Admin]);
        let cache = ReadCache::<i64, String>::new(1 << 20).unwrap();
        let id = created(
            service
                .create_user(&admin, user("Ann", None), None)
                .await
                .unwrap(),
        )
        .id;
        let read = async || {
            service
                .get_user(&admin, id, Some(&cache), |model| model.name)
                .await
                .unwrap()
        };
        assert_eq!(read().await, "Ann");
        assert_eq!(read().await, "Ann");
        assert_eq!(cache.counts(), (1, 1));
        let rename = UserChanges {
            name: Some(UserName::parse("Anna").unwrap()),
            ..UserChanges::default()
        };
        service
            .update_user(&admin, id, rename, IfMatch::Absent)
            .await
            .unwrap();
        assert_eq!(read().await, "Anna");
        // Around the service, as another process would write.
        let other = sea_orm::Database::connect(settings(&dir).url)
            .await
            .unwrap();
        sea_orm::ConnectionTrait::execute_unprepared(
            &other,
            &format!("UPDATE users SET name = 'Outside' WHERE id = {id}"),
        )
        .await
        .unwrap();
        assert_eq!(read().await, "Outside");
    }
}
