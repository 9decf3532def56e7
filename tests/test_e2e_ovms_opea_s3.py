"""OVMS, OPEA and S3 end to end: Gateway -> RouterActor -> EndpointActor -> provider -> server.

The servers are the wire-faithful fakes (OVMS, OPEA) and real local S3
servers (moto in subprocesses); boto3 used directly checks what the gateway
stored.  Each test gets its own gateway namespace on the session's Ray.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import urllib.request
import uuid

import numpy as np
import pytest
import ray

import ipfs_accelerate_py as ia
from ipfs_accelerate_py import errors
from ipfs_accelerate_py.actors import naming
from ipfs_accelerate_py.actors.endpoint import Outcome
from ipfs_accelerate_py.s3_store import S3Store
from ipfs_accelerate_py.testing.fakes.opea import CORPUS
from ipfs_accelerate_py.testing.fakes.runner import start_fake
from ipfs_accelerate_py.testing.s3server import free_port, start_s3_server
from ipfs_accelerate_py.types import OperationRequest

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402

pytestmark = pytest.mark.ray

MiB = 1024 * 1024
BUCKET = "models"
MSG = [{"role": "user", "content": "hello there"}]
FAST_RETRY = {"max_retries": 3, "initial_retry_delay": 0.01, "max_retry_delay": 0.05}
OVMS_KEY = "ovms-e2e-key-5b1c9f0e7d2a"


# ---------------------------------------------------------------------------
# Servers (one per module) and helpers
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ovms_fake():
    handle = start_fake("ovms", controls={"valid_keys": [OVMS_KEY]})
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def opea_fake():
    handle = start_fake("opea")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def s3_servers():
    first, second = start_s3_server(), start_s3_server()
    yield first, second
    first.stop()
    second.stop()


def reference_client(url: str):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="ref",
                        aws_secret_access_key="ref", config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def s3_server(s3_servers):
    """The first S3 server, emptied, with the bucket; and boto3 on it."""
    server = s3_servers[0]
    server.reset()
    client = reference_client(server.endpoint_url)
    client.create_bucket(Bucket=BUCKET)
    return server, client


def s3_endpoint(eid: str, url: str, access: str | None = None, secret: str | None = None, **kw) -> dict:
    return {"id": eid, "provider": "s3", "base_url": url,
            "options": {"bucket": BUCKET, "access_key_id": access or f"AKIA{eid.upper().replace('-', '')}",
                        "secret_access_key": secret or f"secret-{eid}-{uuid.uuid4().hex[:8]}"}, **kw}


def ovms_endpoint(fake, **kw) -> dict:
    return {"id": "ovms-1", "provider": "ovms", "base_url": fake.root_url, "api_key": OVMS_KEY,
            "models": ["tiny-llm", "tiny-embed", "add-one", "string-length", "ghost"], **kw}


def opea_endpoint(fake, **kw) -> dict:
    return {"id": "opea-1", "provider": "opea", "base_url": fake.root_url, "models": ["neural-chat", "bge"], **kw}


def endpoint_actor(gw, endpoint_id: str):
    return ray.get_actor(naming.endpoint_prefix(gw.config) + endpoint_id, namespace=gw.namespace)


# ---------------------------------------------------------------------------
# OVMS
# ---------------------------------------------------------------------------

def test_ovms_chat_stream_embed_and_infer(make_gateway, ovms_fake):
    ovms_fake.reset()
    gw = make_gateway({"endpoints": [ovms_endpoint(ovms_fake)], "retry": FAST_RETRY})
    reply = gw.chat("tiny-llm", MSG, max_tokens=50, logit_bias={"1": 5}, user="u-1", top_k=10,
                    repetition_penalty=1.05)  # OpenAI-only fields are dropped, OVMS extras pass
    assert reply.text == "Echo: hello there" and reply.provider == "ovms" and reply.endpoint_id == "ovms-1"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0

    chunks = list(gw.stream_chat("tiny-llm", MSG))
    assert "".join(c.text for c in chunks) == reply.text and chunks[-1].done
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens

    vectors = gw.embed("tiny-embed", ["alpha", "beta"]).embeddings
    assert len(vectors) == 2 and len(vectors[0]) == 384 and vectors[0] != vectors[1]

    out = gw.call("infer", "add-one", inputs={"input": np.array([[1.0, 2.0, 3.0]], dtype=np.float32)})
    assert isinstance(out.data["output"], np.ndarray) and out.data["output"].tolist() == [[2.0, 3.0, 4.0]]
    assert out.endpoint_id == "ovms-1" and out.raw["model_version"] == "2"
    pinned = gw.call("infer", "add-one", version=1,
                     inputs=[{"name": "input", "shape": [2, 1], "datatype": "FP32", "data": [5, 6]}])
    assert pinned.data["output"].tolist() == [[6.0], [7.0]] and pinned.raw["model_version"] == "1"
    lengths = gw.call("infer", "string-length", inputs={"text": np.array(["ab", "\u00e9"])})
    assert lengths.data["length"].tolist() == [2, 2]

    assert gw.call("model_info", "add-one").data["platform"] == "OpenVINO"
    assert gw.call("health", "add-one").data is True
    # the key travelled to /v3 (the fake requires it) and nowhere is it shown
    assert ovms_fake.key_stats(OVMS_KEY)["ok"] >= 3
    assert OVMS_KEY not in repr(gw.endpoints())


def test_ovms_async_and_raw_router_handle(make_gateway, ovms_fake):
    ovms_fake.reset()
    gw = make_gateway({"endpoints": [ovms_endpoint(ovms_fake)]})
    tensor = np.arange(4, dtype=np.float32).reshape(2, 2)

    async def main():
        chat, infer = await asyncio.gather(gw.achat("tiny-llm", MSG), gw.acall("infer", "add-one",
                                                                                inputs={"input": tensor}))
        pieces = [c.text async for c in gw.astream_chat("tiny-llm", MSG)]
        return chat, infer, pieces

    chat, infer, pieces = asyncio.run(main())
    assert chat.text == "Echo: hello there" and "".join(pieces) == chat.text
    assert np.array_equal(infer.data["output"], tensor + 1)

    @ray.remote
    def remote_job(router):
        result = ray.get(router.call.remote("infer", "add-one", inputs={"input": np.ones((1, 3), np.float32)}))
        return result.data["output"].tolist()

    assert ray.get(remote_job.remote(gw.router)) == [[2.0, 2.0, 2.0]]
    direct = ray.get(gw.router.chat.remote(model="tiny-llm", messages=MSG, priority="HIGH"))
    assert direct.text == chat.text and direct.request_id.startswith("req_")


def test_ovms_errors_are_typed_across_ray(make_gateway, ovms_fake):
    ovms_fake.reset()
    gw = make_gateway({"endpoints": [ovms_endpoint(ovms_fake)], "retry": FAST_RETRY})
    with pytest.raises(ia.UnknownModelError):  # configured here, unknown to the server: its 404
        gw.chat("ghost", MSG)
    with pytest.raises(errors.InvalidRequestError, match="precision"):  # the server's 400
        gw.call("infer", "add-one", inputs={"input": np.ones((1, 2))})  # float64
    with pytest.raises(errors.InvalidRequestError, match="elements"):  # caught before sending
        gw.call("infer", "add-one", inputs=[{"name": "input", "shape": [3, 3], "datatype": "FP32", "data": [1]}])
    ovms_fake.controls(faults=[{"kind": "status", "status": 503, "count": 1, "path": "/v3/"}])
    assert gw.chat("tiny-llm", MSG).text == "Echo: hello there"  # retried after the 503
    stats = gw.stats("ovms-1")
    assert stats["failed_requests"] >= 3 and stats["successful_requests"] >= 1


# ---------------------------------------------------------------------------
# OPEA
# ---------------------------------------------------------------------------

def test_opea_chat_stream_embed_and_chatqna(make_gateway, opea_fake):
    opea_fake.reset()
    gw = make_gateway({"endpoints": [opea_endpoint(opea_fake)], "retry": FAST_RETRY})
    reply = gw.chat("neural-chat", MSG)
    assert reply.text == "Echo: hello there" and reply.provider == "opea" and reply.usage.total_tokens > 0
    assert "".join(c.text for c in gw.stream_chat("neural-chat", MSG)) == reply.text
    assert len(gw.embed("bge", "hello").embeddings[0]) == 768

    question = "What does OPEA's ChatQnA pipeline do?"
    answer = gw.call("chatqna", provider="opea", messages=question, k=6, top_n=2)
    assert answer.text.startswith(f"Echo: {question}") and sum(doc in answer.text for doc in CORPUS) == 2
    assert answer.usage.details == {"estimated": True} and answer.usage.completion_tokens > 0
    stats = gw.stats("opea-1")
    assert stats["output_tokens"] >= answer.usage.completion_tokens  # estimated usage is counted
    assert gw.call("health", provider="opea").data is True


def test_opea_chatqna_stream_through_the_endpoint_actor(make_gateway, opea_fake):
    """The stream runs in the gateway's endpoint actor, decoding every b'..' fragment."""
    opea_fake.reset()
    gw = make_gateway({"endpoints": [opea_endpoint(opea_fake)]})
    question = "Tell me about caf\u00e9 prices in Z\u00fcrich and Windows paths"
    expected = gw.call("chatqna", provider="opea", messages=question, k=6, top_n=6).text
    assert all(doc in expected for doc in CORPUS)  # quotes, newline, backslashes, non-ASCII
    actor = endpoint_actor(gw, "opea-1")
    request = OperationRequest(op="stream_chatqna", params={"messages": question, "k": 6, "top_n": 6})
    items = [ray.get(ref) for ref in actor.stream.remote("stream_chatqna", request, "rid-qna", 0)]
    outcome, chunks = items[-1], items[:-1]
    assert isinstance(outcome, Outcome) and outcome.error is None
    assert "".join(c.text for c in chunks) == expected and len(chunks) > 3
    assert chunks[-1].done and chunks[-1].usage.details == {"estimated": True}
    assert all(c.endpoint_id == "opea-1" and c.request_id == "rid-qna" for c in chunks)


def test_opea_chatqna_stream_through_the_router(make_gateway, opea_fake):
    gw = make_gateway({"endpoints": [opea_endpoint(opea_fake)]})
    streamed = list(gw.stream_call("stream_chatqna", provider="opea", messages="What is OPEA?"))
    whole = gw.call("chatqna", provider="opea", messages="What is OPEA?", stream=False)
    assert streamed[-1].done
    assert "".join(c.text for c in streamed) == whole.text


# ---------------------------------------------------------------------------
# S3
# ---------------------------------------------------------------------------

def test_s3_store_objects(make_gateway, s3_server):
    server, ref = s3_server
    gw = make_gateway({"endpoints": [s3_endpoint("s3-1", server.endpoint_url)]})
    store = S3Store(gw)
    put = store.put_bytes("llama/config.json", b'{"dim": 4096}', content_type="application/json",
                          metadata={"family": "llama"})
    obj = ref.get_object(Bucket=BUCKET, Key="llama/config.json")
    assert obj["Body"].read() == b'{"dim": 4096}' and obj["Metadata"]["sha256"] == put["sha256"]
    ref.put_object(Bucket=BUCKET, Key="llama/tokenizer.json", Body=b"{}")
    assert store.get_bytes("llama/config.json") == b'{"dim": 4096}'
    assert store.get_bytes("llama/config.json", range=(1, 5)) == b'"dim"'
    head = store.head("llama/config.json")
    assert head["ContentLength"] == 13 and head["Metadata"]["family"] == "llama"
    assert [o["key"] for o in store.list("llama/")["objects"]] == ["llama/config.json", "llama/tokenizer.json"]
    assert store.list(delimiter="/")["prefixes"] == ["llama/"]
    with urllib.request.urlopen(store.presign("llama/config.json", expires_s=300), timeout=10) as resp:
        assert resp.read() == b'{"dim": 4096}'  # plain HTTP, no credentials
    upload = urllib.request.Request(store.presign("llama/new.bin", method="put"), data=b"via url", method="PUT",
                                    headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(upload, timeout=10) as resp:
        assert resp.status == 200
    assert ref.get_object(Bucket=BUCKET, Key="llama/new.bin")["Body"].read() == b"via url"
    store.delete("llama/new.bin")
    store.delete(["llama/config.json", "llama/tokenizer.json"])
    assert ref.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    with pytest.raises(errors.NotFoundError):
        store.get_bytes("llama/config.json")  # NoSuchKey, typed across Ray
    with pytest.raises(errors.NotFoundError):
        store.head("llama/config.json")  # HEAD: status-only 404
    assert gw.stats("s3-1")["successful_requests"] >= 8


def test_s3_presign_with_method_keyword_through_gateway(make_gateway, s3_server):
    server, _ = s3_server
    gw = make_gateway({"endpoints": [s3_endpoint("s3-1", server.endpoint_url)]})
    url = gw.call("s3_presign", provider="s3", key="k", method="put").data
    assert url.startswith(server.endpoint_url) and "X-Amz-Signature" in url


def test_s3_multipart_file_over_two_endpoints(make_gateway, s3_server, tmp_path):
    server, ref = s3_server
    gw = make_gateway({"strategy": "round-robin", "retry": FAST_RETRY,
                       "endpoints": [s3_endpoint("s3-a", server.endpoint_url),
                                     s3_endpoint("s3-b", server.endpoint_url)]})
    store = S3Store(gw, part_size=5 * MiB, max_concurrency=2)
    source = tmp_path / "model.safetensors"
    data = os.urandom(12 * MiB)
    source.write_bytes(data)
    progress: list[tuple[int, int]] = []
    result = store.upload_file(source, "llama/model.safetensors", progress=lambda d, t: progress.append((d, t)))
    assert result["parts"] == 3 and result["size"] == len(data)
    assert len(progress) == 3 and progress[-1] == (len(data), len(data))
    obj = ref.get_object(Bucket=BUCKET, Key="llama/model.safetensors")
    assert obj["Body"].read() == data and obj["ETag"].endswith('-3"')
    assert obj["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()

    target = tmp_path / "copy.safetensors"
    got: list[tuple[int, int]] = []
    info = store.download_file("llama/model.safetensors", target, progress=lambda d, t: got.append((d, t)))
    assert info["verified"] and target.read_bytes() == data and got[-1] == (len(data), len(data))
    stats = gw.stats()["endpoints"]
    # create + 3 parts + complete + head + 3 ranges = 9 routed requests, spread over both keys
    assert stats["s3-a"]["successful_requests"] > 0 and stats["s3-b"]["successful_requests"] > 0
    assert stats["s3-a"]["successful_requests"] + stats["s3-b"]["successful_requests"] == 9


def test_s3_parts_fail_over_from_a_dead_endpoint(make_gateway, s3_server, tmp_path):
    server, ref = s3_server
    dead = f"http://127.0.0.1:{free_port()}"
    gw = make_gateway({"strategy": "round-robin", "retry": FAST_RETRY,
                       "endpoints": [s3_endpoint("s3-dead", dead, timeout_s=5),
                                     s3_endpoint("s3-live", server.endpoint_url)]})
    store = S3Store(gw, part_size=5 * MiB, max_concurrency=1)
    source = tmp_path / "w.bin"
    data = os.urandom(11 * MiB)
    source.write_bytes(data)
    store.upload_file(source, "w.bin")
    assert ref.get_object(Bucket=BUCKET, Key="w.bin")["Body"].read() == data
    stats = gw.stats()["endpoints"]
    assert stats["s3-dead"]["successful_requests"] == 0 and stats["s3-dead"]["failed_requests"] >= 1
    assert stats["s3-live"]["successful_requests"] == 5  # create, 3 parts, complete


def test_s3_two_servers_each_with_its_own_store(make_gateway, s3_servers, s3_server, tmp_path):
    first, second = s3_servers
    other = reference_client(second.endpoint_url)
    second.reset()
    other.create_bucket(Bucket=BUCKET)
    gw = make_gateway({"endpoints": [s3_endpoint("s3-one", first.endpoint_url),
                                     s3_endpoint("s3-two", second.endpoint_url)]})
    one, two = S3Store(gw, endpoint_id="s3-one"), S3Store(gw, endpoint_id="s3-two")
    one.put_bytes("where.txt", b"first")
    two.put_bytes("where.txt", b"second")
    assert s3_server[1].get_object(Bucket=BUCKET, Key="where.txt")["Body"].read() == b"first"
    assert other.get_object(Bucket=BUCKET, Key="where.txt")["Body"].read() == b"second"
    assert one.get_bytes("where.txt") == b"first" and two.get_bytes("where.txt") == b"second"
    stats = gw.stats()["endpoints"]
    assert stats["s3-one"]["successful_requests"] == 2 and stats["s3-two"]["successful_requests"] == 2


def test_s3_wrong_credentials_are_authentication_errors(make_gateway):
    """moto enforces SigV4 and IAM here, so a wrong secret really is refused."""
    with start_s3_server(enforce_auth_after=4) as strict:
        admin = dict(endpoint_url=strict.endpoint_url, region_name="us-east-1", aws_access_key_id="admin",
                     aws_secret_access_key="admin")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="loader")
        key = iam.create_access_key(UserName="loader")["AccessKey"]
        iam.put_user_policy(UserName="loader", PolicyName="s3", PolicyDocument=(
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'))
        boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **admin).create_bucket(Bucket=BUCKET)
        wrong = "wrong-secret-7Fq2Lz9Kd1"
        gw = make_gateway({"retry": FAST_RETRY, "endpoints": [
            # (endpoints are identified by access key id, so the bad one uses a key IAM does not know)
            s3_endpoint("s3-bad", strict.endpoint_url, "AKIANOTAREALKEY00000", wrong),
            s3_endpoint("s3-good", strict.endpoint_url, key["AccessKeyId"], key["SecretAccessKey"])]})
        with pytest.raises(errors.AuthenticationError) as info:
            S3Store(gw, endpoint_id="s3-bad").put_bytes("k", b"v")
        assert info.value.code == "InvalidAccessKeyId" and info.value.endpoint_id == "s3-bad"
        assert wrong not in str(info.value)
        # unpinned, the router fails over from the refused key to the good one
        store = S3Store(gw)
        for i in range(3):
            store.put_bytes(f"k{i}", b"v")
        assert len(store.list()["objects"]) == 3
        assert gw.circuit_state("s3-bad") == "OPEN"
