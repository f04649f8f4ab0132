"""Drives the live server through the Python client openapi-python-client generated from the
spec: create, read (optional fields included), list and follow `next_cursor`, conditional update,
typed errors. CI also checks it with `mypy --strict`. Usage: python_smoke.py BASE_URL KEY"""

import sys
import uuid

from users_api_client import AuthenticatedClient
from users_api_client.api.users import create_user, get_user, list_users, update_user
from users_api_client.models import Problem, User, UserInput, UserPatch, UserSort
from users_api_client.types import UNSET, Unset

base_url, key = sys.argv[1], sys.argv[2]
client = AuthenticatedClient(base_url=base_url, token=key)
tag = uuid.uuid4().hex[:8]  # names no other run (or fuzzer) has used

created = create_user.sync_detailed(
    client=client, body=UserInput(name=f"Py Thon {tag}", role="Tester", email=f"py-{tag}@example.com")
)
assert created.status_code == 201, created
user = created.parsed
assert isinstance(user, User) and user.name == f"Py Thon {tag}", user
# Fields the server always sends are plain `X | None`, never "unset".
assert user.email is not None and len(user.email) == len(f"py-{tag}@example.com"), user
bare = create_user.sync(client=client, body=UserInput(name=f"Py Thon Two {tag}", role="Tester"))
assert isinstance(bare, User) and bare.email is None and bare.created_by is not None, bare

fetched = get_user.sync_detailed(user.id, client=client)
assert isinstance(fetched.parsed, User) and fetched.parsed.id == user.id, fetched
etag = fetched.headers["etag"]

# Every page, newest first, following `next_cursor` until it is None.
seen: list[int] = []
cursor: str | Unset = UNSET
while True:
    page = list_users.sync(client=client, limit=1, q=tag, sort=UserSort.CREATED_AT_DESC, cursor=cursor)
    assert page is not None and not isinstance(page, Problem), page
    seen.extend(u.id for u in page.items)
    if page.next_cursor is None:
        break
    cursor = page.next_cursor
assert seen == [bare.id, user.id], seen

updated = update_user.sync_detailed(user.id, client=client, body=UserPatch(role="Lead"), if_match=etag)
assert isinstance(updated.parsed, User) and updated.parsed.role == "Lead", updated
stale = update_user.sync_detailed(user.id, client=client, body=UserPatch(role="X"), if_match=etag)
assert stale.status_code == 412 and isinstance(stale.parsed, Problem), stale
assert stale.parsed.type_ == "urn:users-api:problem:precondition-failed", stale.parsed

missing = get_user.sync_detailed(987654321, client=client)
assert isinstance(missing.parsed, Problem) and missing.parsed.status == 404, missing
print(f"python sdk: {missing.parsed.title}: {missing.parsed.detail}")
print("python sdk: create, get, optional fields, pages, conditional update and typed errors work")
