"""Uses a live Keybridge gateway through its v1alpha reflection service
alone: no .proto file and no generated stub. Lists the services, builds the
Secrets.Get messages from the descriptors the server sends, and calls it.

Usage: reflection_client.py <host:port> <root token> <secret path>
<field> <expected value>.
"""

import sys

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

target, root, path, field, expected = sys.argv[1:6]
channel = grpc.insecure_channel(target)
db = ProtoReflectionDescriptorDatabase(channel)
services = set(db.get_services())
print("services: " + " ".join(sorted(services)))
for s in (
    "keybridge.v1.Secrets",
    "keybridge.v1.Sys",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
):
    assert s in services, f"{s} is not listed"

pool = descriptor_pool.DescriptorPool(db)
get = pool.FindServiceByName("keybridge.v1.Secrets").FindMethodByName("Get")
Request, Response = GetMessageClass(get.input_type), GetMessageClass(get.output_type)
call = channel.unary_unary(
    "/keybridge.v1.Secrets/Get",
    request_serializer=Request.SerializeToString,
    response_deserializer=Response.FromString,
)
resp = call(Request(path=path), metadata=[("authorization", f"Bearer {root}")])
assert resp.value.fields.fields[field] == expected, "the value read through reflection differs"
print(f"Secrets.Get through reflection: version {resp.version.version}")
print("ok")
