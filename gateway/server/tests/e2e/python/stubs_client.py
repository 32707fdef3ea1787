"""Drives a live Keybridge gateway through Python stubs that grpcio-tools
generated from proto/keybridge/v1/*.proto (on PYTHONPATH).

Usage: stubs_client.py <host:port> <root token>. Prints one line per check;
any failed check raises, and the process exits non-zero.
"""

import queue
import sys
import threading

import grpc

from keybridge.v1 import secrets_pb2, secrets_pb2_grpc, sys_pb2, sys_pb2_grpc

target, root = sys.argv[1], sys.argv[2]
channel = grpc.insecure_channel(target)
secrets = secrets_pb2_grpc.SecretsStub(channel)
tokens = sys_pb2_grpc.TokensStub(channel)
policies = sys_pb2_grpc.PoliciesStub(channel)


def auth(token):
    return [("authorization", f"Bearer {token}")]


def fields(**kv):
    return secrets_pb2.SecretValue(fields=secrets_pb2.Fields(fields=kv))


# Put, then check-and-set: a stale cas is refused and changes nothing.
put = secrets.Put(secrets_pb2.PutRequest(path="secret/py/app", value=fields(user="alice")), metadata=auth(root))
assert put.version.version == 1, put
put = secrets.Put(
    secrets_pb2.PutRequest(path="secret/py/app", value=fields(user="bob"), cas=1), metadata=auth(root)
)
assert put.version.version == 2, put
try:
    secrets.Put(secrets_pb2.PutRequest(path="secret/py/app", value=fields(user="eve"), cas=1), metadata=auth(root))
    raise AssertionError("a stale cas was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, (e.code(), e.details())
    print(f"stale cas: {e.code().name}: {e.details()}")
print("put: versions 1 and 2")

# Get: the latest version, and an older one by number.
got = secrets.Get(secrets_pb2.GetRequest(path="secret/py/app"), metadata=auth(root))
assert got.version.version == 2 and got.value.fields.fields["user"] == "bob", got.version
got = secrets.Get(secrets_pb2.GetRequest(path="secret/py/app", version=1), metadata=auth(root))
assert got.value.fields.fields["user"] == "alice"
print("get: latest and version 1")

# Watch: the stream is open once its headers arrive; a write then reaches it.
stream = secrets.Watch(secrets_pb2.WatchSecretRequest(path="secret/py/watched"), metadata=auth(root), timeout=30)
stream.initial_metadata()
events = queue.Queue()
threading.Thread(target=lambda: [events.put(ev) for ev in stream], daemon=True).start()
secrets.Put(secrets_pb2.PutRequest(path="secret/py/watched", value=fields(k="v1")), metadata=auth(root))
secrets.Put(secrets_pb2.PutRequest(path="secret/py/watched", value=fields(k="v2")), metadata=auth(root))
first, second = events.get(timeout=10), events.get(timeout=10)
assert (first.path, first.kind, first.version) == ("secret/py/watched", "put", 1), first
assert (second.kind, second.version) == ("put", 2), second
assert "v1" not in str(first) and "v2" not in str(second), "watch events carry no value"
stream.cancel()
print("watch: put 1, put 2")

# A denied call: a token whose policy grants only secret/py/other.
policies.Put(
    sys_pb2.PutPolicyRequest(name="py-other", policy='path "secret/data/py/other" { capabilities = ["read"] }'),
    metadata=auth(root),
)
limited = tokens.Create(
    sys_pb2.CreateTokenRequest(policies=["py-other"], no_default_policy=True), metadata=auth(root)
).token
try:
    secrets.Get(secrets_pb2.GetRequest(path="secret/py/app"), metadata=auth(limited))
    raise AssertionError("the limited token read secret/py/app")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED, (e.code(), e.details())
    assert "\n" not in e.details() and e.details(), e.details()
    print(f"denied: {e.code().name}: {e.details()}")
try:
    secrets.Get(secrets_pb2.GetRequest(path="secret/py/app"))
    raise AssertionError("a call without a token was let through")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED, (e.code(), e.details())
    print(f"no token: {e.code().name}: {e.details()}")

# The KeyStatus rpc and its KeyringStatus message (they once shared a name).
ks = sys_pb2_grpc.SysStub(channel).KeyStatus(sys_pb2.KeyStatusRequest(), metadata=auth(root))
assert ks.term >= 1 and ks.terms >= 1, ks
print(f"key status: term {ks.term}")
print("ok")
