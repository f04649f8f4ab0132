import os

from users_api_client import AuthenticatedClient
from users_api_client.api.users import create_user, get_user
from users_api_client.models import Problem, User, UserInput

client = AuthenticatedClient(base_url=os.environ["USERS_API_URL"], token=os.environ["KEY"])
ann = create_user.sync(client=client, body=UserInput(name="Ann", role="Dev"))
assert isinstance(ann, User)
print(ann.id, ann.name, ann.email or "(no email)")
missing = get_user.sync(987654321, client=client)
if isinstance(missing, Problem):
    print(missing.title, "-", missing.detail)
