"""Drives the live server through the Python client openapi-python-client generated from the
spec: create, read, list, conditional update, typed error. Usage: python_smoke.py BASE_URL KEY"""

import sys

from users_api_client import AuthenticatedClient
from users_api_client.api.users import create_user, get_user, list_users, update_user
from users_api_client.models import Problem, User, UserInput, UserPage, UserPatch

base_url, key = sys.argv[1], sys.argv[2]
client = AuthenticatedClient(base_url=base_url, token=key)

created = create_user.sync_detailed(client=client, body=UserInput(name="Py Thon", role="Tester"))
assert created.status_code == 201, created
user = created.parsed
assert isinstance(user, User) and user.name == "Py Thon", user

fetched = get_user.sync_detailed(user.id, client=client)
assert fetched.status_code == 200 and fetched.parsed.id == user.id, fetched
etag = fetched.headers["etag"]

page = list_users.sync(client=client, limit=200, q="thon")
assert isinstance(page, UserPage) and [u.id for u in page.items] == [user.id], page

updated = update_user.sync_detailed(user.id, client=client, body=UserPatch(role="Lead"), if_match=etag)
assert updated.status_code == 200 and updated.parsed.role == "Lead", updated
stale = update_user.sync_detailed(user.id, client=client, body=UserPatch(role="X"), if_match=etag)
assert stale.status_code == 412 and isinstance(stale.parsed, Problem), stale
assert stale.parsed.type_ == "urn:users-api:problem:precondition-failed", stale.parsed

missing = get_user.sync_detailed(987654321, client=client)
assert missing.status_code == 404 and isinstance(missing.parsed, Problem), missing
print("python sdk: create, get, list, conditional update and typed errors work")
