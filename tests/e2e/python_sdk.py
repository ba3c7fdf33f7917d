"""The unmodified Pinecone Python SDK (pinecone==10.2.0) through the proxy.

Run against `pinecone-admin-proxy demo`: PROXY is the proxy's URL. The Admin API client gets
placeholder credentials and exchanges them at the proxy's /oauth/token; the fake Pinecone
behind the proxy answers 401 to any token it did not issue, so every call below that
succeeds proves the upstream saw the proxy's token, never the SDK's placeholder.
"""

import itertools
import os
import sys

from pinecone import Admin, Pinecone, ServerlessSpec

proxy = os.environ["PROXY"]
admin = Admin(client_id="unused", client_secret="unused", host=proxy, oauth_url=proxy + "/oauth/token")


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


projects = admin.projects.list()
names = [p.name for p in projects]
check("demo-project" in names, f"projects.list sees the demo project ({names})")

project = admin.projects.create(name="sdk-project")
check(project.name == "sdk-project" and project.id, "projects.create")
check(admin.projects.describe(project_id=project.id).name == "sdk-project", "projects.describe")
updated = admin.projects.update(project_id=project.id, name="sdk-project-renamed")
check(updated.name == "sdk-project-renamed", "projects.update")

key = admin.api_keys.create(project_id=project.id, name="sdk-key")
check(key.key.name == "sdk-key" and key.value.startswith("pckey_"), "api_keys.create returns the key and its value")
keys = admin.api_keys.list(project_id=project.id)
check([k.name for k in keys] == ["sdk-key"], "api_keys.list")
admin.api_keys.delete(api_key_id=key.key.id)
check(len(list(admin.api_keys.list(project_id=project.id))) == 0, "api_keys.delete")

admin.projects.delete(project_id=project.id)
check("sdk-project-renamed" not in [p.name for p in admin.projects.list()], "projects.delete")

orgs = list(admin.organizations.list())
check(len(orgs) == 1, "organizations.list")

users = list(admin.users.list())
check(any(u.email == "owner@example.com" for u in users), "users.list")

created = [admin.service_accounts.create(name=f"sdk-account-{i}") for i in range(3)]
check(all(c.client_secret for c in created), "service_accounts.create returns a secret once")
accounts = list(admin.service_accounts.list(limit=1))
check(len(accounts) >= 4, f"service_accounts.list follows pagination with limit=1 ({len(accounts)} accounts)")
rotated = admin.service_accounts.rotate_secret(service_account_id=created[0].service_account.id)
check(rotated.client_secret and rotated.client_secret != created[0].client_secret, "service_accounts.rotate_secret")
for c in created:
    admin.service_accounts.delete(service_account_id=c.service_account.id)

bindings = list(itertools.islice(admin.role_bindings.list(), 10))
check(any(b.role == "OrgOwner" for b in bindings), "role_bindings.list")

# The control plane, with the proxy's managed API key: the SDK's key is a placeholder, which
# the fake would answer 401; every success proves the proxy put its own key in Api-Key.
pc = Pinecone(api_key="unused", host=proxy)
before = [i.name for i in pc.list_indexes()]
pc.create_index(name="sdk-index", dimension=8, metric="cosine", spec=ServerlessSpec(cloud="aws", region="us-east-1"), timeout=-1)
check("sdk-index" in [i.name for i in pc.list_indexes()], f"list_indexes sees the new index (before: {before})")
described = pc.describe_index(name="sdk-index")
check(described.schema.fields["_values"].dimension == 8 and described.host.startswith("https://127.0.0.1:"), "describe_index, with its host")
pc.delete_index(name="sdk-index", timeout=-1)
check("sdk-index" not in [i.name for i in pc.list_indexes()], "delete_index")

# The data plane of the demo's index, through its listener: REST, then the SDK's own gRPC
# client over h2c. The fake answers 401 (gRPC 16) to the placeholder key.
data = Pinecone(api_key="unused", grpc_scheme="http")
rest = data.Index(host=os.environ.get("INDEX", "http://127.0.0.1:8485"))
check(rest.upsert(vectors=[("e2e-1", [1.0, 0.0, 0.0]), ("e2e-2", [0.0, 1.0, 0.0])], namespace="e2e").upserted_count == 2, "REST upsert")
check(rest.query(vector=[0.9, 0.1, 0.0], top_k=1, namespace="e2e").matches[0].id == "e2e-1", "REST query")
rest.update(id="e2e-2", set_metadata={"genre": "poetry"}, namespace="e2e")
check(rest.fetch(ids=["e2e-2"], namespace="e2e").vectors["e2e-2"].metadata == {"genre": "poetry"}, "REST update, then fetch")
page = rest.list_paginated(prefix="e2e-", limit=1, namespace="e2e")
check([v.id for v in page.vectors] == ["e2e-1"] and page.pagination.next == "e2e-1", "REST list_paginated")
fast = data.index(host=os.environ.get("INDEX", "http://127.0.0.1:8485"), grpc=True)
check(fast.upsert(vectors=[("e2e-3", [0.0, 0.0, 1.0])], namespace="e2e").upserted_count == 1, "gRPC upsert")
check(fast.query(vector=[0.0, 0.1, 0.9], top_k=1, namespace="e2e").matches[0].id == "e2e-3", "gRPC query")
check(list(fast.fetch(ids=["e2e-3"], namespace="e2e").vectors["e2e-3"].values) == [0.0, 0.0, 1.0], "gRPC fetch")
check(fast.describe_index_stats().total_vector_count >= 3, "gRPC describe_index_stats")

print("python SDK through the proxy: all checks passed")
