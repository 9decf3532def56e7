"""The S3 provider and S3Store against a real local S3 server (moto in a subprocess).

boto3 used directly is the reference: it creates buckets and checks what our
provider wrote, and writes what our provider must read.  Error mapping is
checked both against moto's real answers and, for codes moto never sends
(SlowDown, 5xx), with botocore's Stubber so the real ClientError path runs.
S3Store runs here over an in-process stand-in for the Gateway (each call goes
straight to a provider); tests/test_e2e_ovms_opea_s3.py runs it through Ray.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import threading
import urllib.request
import uuid

import pytest

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402
from botocore.stub import Stubber  # noqa: E402

from ipfs_accelerate_py import errors  # noqa: E402
from ipfs_accelerate_py.config import EndpointConfig, Secret  # noqa: E402
from ipfs_accelerate_py.providers import s3 as s3_module  # noqa: E402
from ipfs_accelerate_py.providers.base import get_provider_class  # noqa: E402
from ipfs_accelerate_py.providers.s3 import S3Provider, error_for_code, parse_range  # noqa: E402
from ipfs_accelerate_py.s3_store import S3Store  # noqa: E402
from ipfs_accelerate_py.testing.s3server import free_port, start_s3_server  # noqa: E402
from ipfs_accelerate_py.types import OperationRequest  # noqa: E402

BUCKET = "models"
ACCESS = "AKIATESTACCESS0001"
SECRET = "s3-secret-Zq8pLx2Vn4Tb6Rm0"
MiB = 1024 * 1024


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    handle = start_s3_server()
    yield handle
    handle.stop()


@pytest.fixture
def s3(server):
    """A clean server with the bucket, and boto3 on it (the reference client)."""
    server.reset()
    client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="ref", aws_secret_access_key="ref",
                          config=Config(s3={"addressing_style": "path"}))
    client.create_bucket(Bucket=BUCKET)
    return client


def endpoint(url: str | None, **options) -> EndpointConfig:
    opts = {"bucket": BUCKET, "access_key_id": ACCESS, "secret_access_key": SECRET, **options}
    return EndpointConfig(id="s3-1", provider="s3", base_url=url, options={k: v for k, v in opts.items()
                                                                           if v is not None})


def run(provider: S3Provider, op: str, **params):
    result, headers = asyncio.run(provider.execute(op, OperationRequest(op=op, params=params), "rid", None))
    assert headers == {} and result.provider == "s3" and result.endpoint_id == provider.endpoint.id
    return result


@pytest.fixture
def provider(server, s3) -> S3Provider:
    return S3Provider(endpoint(server.endpoint_url))


class DirectGateway:
    """The part of Gateway that S3Store uses, calling providers in-process.

    Records every call and can be told to fail chosen ones, which is how
    S3Store's abort and verification paths are driven without Ray.
    """

    def __init__(self, *providers: S3Provider) -> None:
        self.providers = {p.endpoint.id: p for p in providers}
        self.calls: list[tuple[str, dict]] = []
        self.used: list[str] = []
        self.fail: dict[tuple[str, str | None], Exception] = {}
        self._lock = threading.Lock()
        self._turn = 0

    def call(self, op, model=None, *, provider=None, endpoint_id=None, **params):
        assert provider == "s3"
        with self._lock:
            self.calls.append((op, dict(params)))
            failure = self.fail.pop((op, params.get("action")), None)
            if endpoint_id is None:
                ids = sorted(self.providers)
                endpoint_id = ids[self._turn % len(ids)]
                self._turn += 1
            self.used.append(endpoint_id)
        if failure is not None:
            raise failure
        return run(self.providers[endpoint_id], op, **params)

    def ops(self, op: str, action: str | None = None) -> list[dict]:
        return [p for o, p in self.calls if o == op and (action is None or p.get("action") == action)]


def write_file(path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


# ---------------------------------------------------------------------------
# Pure: mapping, parsing, settings
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("code, status, cls, retryable", [
    ("NoSuchKey", 404, errors.NotFoundError, False),
    ("NoSuchBucket", 404, errors.NotFoundError, False),
    ("404", 404, errors.NotFoundError, False),
    ("NoSuchUpload", 404, errors.NotFoundError, False),
    ("AccessDenied", 403, errors.AuthenticationError, False),
    ("SignatureDoesNotMatch", 403, errors.AuthenticationError, False),
    ("InvalidAccessKeyId", 403, errors.AuthenticationError, False),
    ("403", 403, errors.AuthenticationError, False),
    ("SlowDown", 503, errors.RateLimitError, True),
    ("ServiceUnavailable", 503, errors.ProviderOverloadedError, True),
    ("InternalError", 500, errors.ProviderError, True),
    ("RequestTimeout", 400, errors.TimeoutError, True),
    ("OperationAborted", 409, errors.ProviderError, True),
    ("EntityTooSmall", 400, errors.InvalidRequestError, False),
    ("InvalidBucketName", 400, errors.InvalidRequestError, False),
    ("InvalidRange", 416, errors.InvalidRequestError, False),
    ("PreconditionFailed", 412, errors.InvalidRequestError, False),
    ("NotImplemented", 501, errors.UnsupportedOperationError, False),
])
def test_error_for_code(code, status, cls, retryable):
    err = error_for_code(code, f"s3_get models/k: {code}", status=status, provider="s3")
    assert type(err) is cls and err.retryable is retryable and err.code == code


def test_parse_range():
    assert parse_range("bytes=0-99") == "bytes=0-99"
    assert parse_range((10, 19)) == "bytes=10-19"
    assert parse_range((5, None)) == "bytes=5-"
    assert parse_range("bytes=-50") == "bytes=-50"
    for bad in ("0-99", (5, 2), (-1, 3), (True, 4), "bytes=a-b", 7):
        with pytest.raises(errors.InvalidRequestError):
            parse_range(bad)


def test_registered_and_settings():
    assert get_provider_class("s3") is S3Provider and get_provider_class("s3_kit") is S3Provider
    local = S3Provider(endpoint("http://127.0.0.1:9000"))
    assert local.addressing_style() == "path" and local.region == "us-east-1" and local.default_bucket == BUCKET
    aws = S3Provider(endpoint(None, region="eu-west-1"))
    assert aws.addressing_style() == "auto" and aws.region == "eu-west-1" and aws.is_aws
    client = local.client()
    assert client is local.client()  # one client per provider
    retries = client.meta.config.retries
    assert retries["total_max_attempts"] == 1 and retries["mode"] == "standard"  # the router retries
    assert client.meta.endpoint_url == "http://127.0.0.1:9000"
    assert client.meta.config.s3["addressing_style"] == "path"


def test_bad_settings_are_config_errors():
    with pytest.raises(errors.ConfigError, match="secret_access_key"):
        S3Provider(endpoint("http://h:1", secret_access_key=None)).client()
    with pytest.raises(errors.ConfigError, match="addressing_style"):
        S3Provider(endpoint("http://h:1", addressing_style="sideways")).client()
    # the api_key may carry the secret instead
    ep = EndpointConfig(id="s3-k", provider="s3", base_url="http://h:1", api_key=SECRET,
                        options={"access_key_id": ACCESS})
    creds = S3Provider(ep).client()._request_signer._credentials
    assert creds.access_key == ACCESS and creds.secret_key == SECRET


def test_missing_boto3_is_a_config_error_with_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(errors.ConfigError, match=r"pip install"):
        S3Provider(endpoint("http://h:1")).client()


@pytest.mark.parametrize("op, params, needle", [
    ("s3_put", {"key": "", "body": b"x"}, "key"),
    ("s3_put", {"key": "k", "body": 5}, "bytes"),
    ("s3_put", {"key": "k", "body": b"x", "metadata": {"a": 1}}, "metadata"),
    ("s3_put", {"key": "k", "body": b"x", "metadata": {"sha256": "0" * 64}}, "sha256"),
    ("s3_put", {"key": "k" * 1025, "body": b"x"}, "1024"),
    ("s3_list", {"max_keys": 5000}, "max_keys"),
    ("s3_presign", {"key": "k", "expires_s": 604801}, "expires_s"),
    ("s3_presign", {"key": "k", "method": "delete"}, "http_method"),
    ("s3_upload", {"key": "k", "action": "rename"}, "action"),
    ("s3_upload", {"key": "k", "action": "part", "body": b"x"}, "upload_id"),
    ("s3_upload", {"key": "k", "action": "part", "upload_id": "u", "part_number": 10001, "body": b"x"},
     "part_number"),
    ("s3_upload", {"key": "k", "action": "complete", "upload_id": "u", "parts": [{"part_number": 1}]}, "etag"),
    ("s3_upload", {"key": "k", "action": "complete", "upload_id": "u",
                   "parts": [{"part_number": 1, "etag": "a"}, {"PartNumber": 1, "ETag": "b"}]}, "unique"),
    ("s3_download", {"key": "k"}, "range"),
    ("s3_delete", {"keys": "not-a-list"}, "keys"),
])
def test_invalid_params_fail_before_any_request(op, params, needle):
    provider = S3Provider(endpoint("http://127.0.0.1:9"))  # nothing listens: a request would be a ConnectionError
    with pytest.raises(errors.InvalidRequestError, match=needle):
        run(provider, op, **params)


def test_no_bucket_anywhere_is_invalid():
    provider = S3Provider(endpoint("http://127.0.0.1:9", bucket=None))
    with pytest.raises(errors.InvalidRequestError, match="bucket"):
        run(provider, "s3_get", key="k")


def test_unreachable_endpoint_is_a_retryable_connection_error():
    provider = S3Provider(endpoint(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(errors.ConnectionError) as info:
        run(provider, "s3_head", key="k")
    assert info.value.retryable and SECRET not in str(info.value)


@pytest.mark.parametrize("code, status, cls, retryable", [
    ("SlowDown", 503, errors.RateLimitError, True),
    ("InternalError", 500, errors.ProviderError, True),
    ("AccessDenied", 403, errors.AuthenticationError, False),
])
def test_real_client_errors_are_mapped(code, status, cls, retryable):
    provider = S3Provider(endpoint("http://127.0.0.1:9"))
    with Stubber(provider.client()) as stub:
        stub.add_client_error("get_object", service_error_code=code, service_message=f"{code} {SECRET}",
                              http_status_code=status,
                              response_meta={"HTTPHeaders": {"Retry-After": "2"}})
        with pytest.raises(cls) as info:
            run(provider, "s3_get", key="weights.bin")
    err = info.value
    assert err.retryable is retryable and err.status == status and err.code == code
    assert "s3_get models/weights.bin" in str(err) and err.endpoint_id == "s3-1"
    assert SECRET not in str(err) and SECRET not in repr(err)  # even when the upstream echoes it
    if cls is errors.RateLimitError:
        assert err.retry_after == 2.0


# ---------------------------------------------------------------------------
# Against moto: boto3 is the reference
# ---------------------------------------------------------------------------

def test_put_is_what_boto3_reads_back(provider, s3):
    body = b"\x00weights\xff" * 100
    result = run(provider, "s3_put", key="llama/weights.bin", body=body, content_type="application/octet-stream",
                 metadata={"Model": "llama"})
    assert result.data["size"] == len(body) and result.data["sha256"] == hashlib.sha256(body).hexdigest()
    obj = s3.get_object(Bucket=BUCKET, Key="llama/weights.bin")
    assert obj["Body"].read() == body and obj["ContentType"] == "application/octet-stream"
    assert obj["Metadata"] == {"model": "llama", "sha256": hashlib.sha256(body).hexdigest()}
    assert obj["ETag"] == result.data["etag"]


def test_get_head_and_ranges_of_what_boto3_wrote(provider, s3):
    s3.put_object(Bucket=BUCKET, Key="cfg.json", Body=b'{"dim": 4096}', ContentType="application/json",
                  Metadata={"sha256": "abc"})
    assert run(provider, "s3_get", key="cfg.json").data == b'{"dim": 4096}'
    assert run(provider, "s3_get", key="cfg.json", range=(1, 5)).data == b'"dim"'
    assert run(provider, "s3_get", key="cfg.json", range="bytes=-5").data == b'4096}'
    head = run(provider, "s3_head", key="cfg.json").data
    assert head["ContentLength"] == 13 and head["ContentType"] == "application/json"
    assert head["Metadata"] == {"sha256": "abc"} and head["ETag"].startswith('"')
    assert head["LastModified"][:4].isdigit() and "T" in head["LastModified"]
    part = run(provider, "s3_download", key="cfg.json", offset=8, length=5)
    assert part.data == b'4096}' and part.raw["total"] == 13 and part.raw["content_range"] == "bytes 8-12/13"
    with pytest.raises(errors.InvalidRequestError) as info:  # the object is not the version we started with
        run(provider, "s3_download", key="cfg.json", offset=0, length=2, if_match='"0000"')
    assert info.value.status == 412


def test_missing_objects_and_buckets_are_not_found(provider):
    for op, params in (("s3_get", {"key": "nope"}), ("s3_head", {"key": "nope"}),
                       ("s3_get", {"key": "k", "bucket": "no-such-bucket"}),
                       ("s3_list", {"bucket": "no-such-bucket"})):
        with pytest.raises(errors.NotFoundError) as info:
            run(provider, op, **params)
        assert info.value.status == 404 and not info.value.retryable and SECRET not in str(info.value)


def test_list_pages_prefixes_and_tokens(provider, s3):
    for key in ("m/a/1", "m/a/2", "m/b/1", "m/c", "other"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    tree = run(provider, "s3_list", prefix="m/", delimiter="/").data
    assert [o["key"] for o in tree["objects"]] == ["m/c"] and tree["prefixes"] == ["m/a/", "m/b/"]
    keys, token, pages = [], None, 0
    while True:
        page = run(provider, "s3_list", prefix="m/", max_keys=2, continuation_token=token).data
        keys += [o["key"] for o in page["objects"]]
        pages += 1
        token = page["next_token"]
        if not token:
            break
    assert keys == ["m/a/1", "m/a/2", "m/b/1", "m/c"] and pages == 2
    assert page["objects"][0]["size"] == len(b"m/b/1")


def test_delete_one_and_many_in_batches(provider, s3, monkeypatch):
    for i in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"d/{i}", Body=b"x")
    assert run(provider, "s3_delete", key="d/0").data == {"deleted": ["d/0"], "errors": []}
    monkeypatch.setattr(s3_module, "MAX_DELETE_BATCH", 2)
    calls = []
    client = provider.client()
    real = client.delete_objects
    monkeypatch.setattr(client, "delete_objects", lambda **kw: calls.append(kw) or real(**kw))
    result = run(provider, "s3_delete", keys=["d/1", "d/2", "d/3", "d/4", "d/missing"]).data
    assert sorted(result["deleted"]) == ["d/1", "d/2", "d/3", "d/4", "d/missing"] and result["errors"] == []
    assert [len(c["Delete"]["Objects"]) for c in calls] == [2, 2, 1]
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="d/")["KeyCount"] == 0


def test_presigned_urls_work_without_credentials(provider, s3):
    s3.put_object(Bucket=BUCKET, Key="public/readme.md", Body=b"# model card")
    url = run(provider, "s3_presign", key="public/readme.md", expires_s=600).data
    assert url.startswith(f"{provider.base_url}/{BUCKET}/public/readme.md?") and "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"# model card"
    put_url = run(provider, "s3_presign", key="public/upload.bin", http_method="put").data
    assert run(provider, "s3_presign", key="public/upload.bin", method="put").data.startswith(put_url[:60])
    # an explicit type: urllib's default (form-urlencoded) makes moto's Flask parse the body as a form
    req = urllib.request.Request(put_url, data=b"uploaded", method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    assert s3.get_object(Bucket=BUCKET, Key="public/upload.bin")["Body"].read() == b"uploaded"


def test_multipart_primitives(provider, s3):
    meta = {"sha256": "f" * 64}
    upload = run(provider, "s3_upload", action="create", key="big.bin", content_type="application/x-weights",
                 metadata=meta).data
    first, second = os.urandom(5 * MiB), os.urandom(1234)
    p2 = run(provider, "s3_upload", action="part", key="big.bin", upload_id=upload["upload_id"], part_number=2,
             body=second).data
    p1 = run(provider, "s3_upload", action="part", key="big.bin", upload_id=upload["upload_id"], part_number=1,
             body=first).data
    assert p1["size"] == 5 * MiB and p1["etag"].startswith('"')
    done = run(provider, "s3_upload", action="complete", key="big.bin", upload_id=upload["upload_id"],
               parts=[p2, p1]).data  # any order: sorted by part number
    assert done["parts"] == 2 and done["etag"].endswith('-2"')
    obj = s3.get_object(Bucket=BUCKET, Key="big.bin")
    assert obj["Body"].read() == first + second and obj["Metadata"] == meta
    assert obj["ContentType"] == "application/x-weights"


def test_multipart_small_parts_and_abort(provider, s3):
    upload = run(provider, "s3_upload", action="create", key="small.bin").data
    parts = [run(provider, "s3_upload", action="part", key="small.bin", upload_id=upload["upload_id"],
                 part_number=n, body=b"x" * 10).data for n in (1, 2)]
    with pytest.raises(errors.InvalidRequestError) as info:
        run(provider, "s3_upload", action="complete", key="small.bin", upload_id=upload["upload_id"], parts=parts)
    assert info.value.code == "EntityTooSmall"
    assert run(provider, "s3_upload", action="abort", key="small.bin", upload_id=upload["upload_id"]).data[
        "aborted"]
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_server_reset_wipes_state(server, s3):
    s3.put_object(Bucket=BUCKET, Key="k", Body=b"v")
    server.reset()
    assert BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_credentials_are_checked_when_the_server_enforces_auth():
    """moto checks SigV4 and IAM once ``enforce_auth_after`` requests have passed."""
    with start_s3_server(enforce_auth_after=4) as strict:
        admin = dict(endpoint_url=strict.endpoint_url, region_name="us-east-1", aws_access_key_id="admin",
                     aws_secret_access_key="admin")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="loader")  # requests 1-3 set up a user with S3 rights
        key = iam.create_access_key(UserName="loader")["AccessKey"]
        iam.put_user_policy(UserName="loader", PolicyName="s3", PolicyDocument=(
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'))
        boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **admin).create_bucket(Bucket=BUCKET)

        good = S3Provider(endpoint(strict.endpoint_url, access_key_id=key["AccessKeyId"],
                                   secret_access_key=Secret(key["SecretAccessKey"])))
        assert run(good, "s3_put", key="k", body=b"ok").data["size"] == 2
        wrong_secret = "wrong-secret-Hq3Lm9Xp"
        for access, secret, code in ((key["AccessKeyId"], wrong_secret, "SignatureDoesNotMatch"),
                                     ("AKIANOTAREALKEY00000", wrong_secret, "InvalidAccessKeyId")):
            bad = S3Provider(endpoint(strict.endpoint_url, access_key_id=access, secret_access_key=secret))
            with pytest.raises(errors.AuthenticationError) as info:
                run(bad, "s3_get", key="k")
            assert info.value.code == code and info.value.status == 403 and not info.value.retryable
            assert wrong_secret not in str(info.value) and key["SecretAccessKey"] not in str(info.value)


# ---------------------------------------------------------------------------
# S3Store, over the in-process gateway stand-in
# ---------------------------------------------------------------------------

def test_store_small_objects(provider, s3):
    store = S3Store(DirectGateway(provider))
    assert store.put_bytes("a.txt", b"alpha", content_type="text/plain")["size"] == 5
    assert store.get_bytes("a.txt") == b"alpha" and store.get_bytes("a.txt", range=(1, 2)) == b"lp"
    assert store.head("a.txt")["ContentType"] == "text/plain"
    assert store.exists("a.txt") and not store.exists("b.txt")
    for i in range(5):
        store.put_bytes(f"dir/{i}", b"x")
    assert [o["key"] for o in store.list("dir/", page_size=2)["objects"]] == [f"dir/{i}" for i in range(5)]
    assert len(list(store.iter_objects("dir/", page_size=2))) == 5
    assert store.list("", delimiter="/")["prefixes"] == ["dir/"]
    assert len(store.delete([f"dir/{i}" for i in range(5)])["deleted"]) == 5
    with urllib.request.urlopen(store.presign("a.txt", expires_s=60), timeout=10) as resp:
        assert resp.read() == b"alpha"
    with pytest.raises(errors.NotFoundError):
        store.get_bytes("gone")


def test_store_rejects_part_sizes_s3_would_refuse(provider):
    with pytest.raises(errors.ConfigError):
        S3Store(DirectGateway(provider), part_size=1024)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_store_multipart_upload_and_verified_download(provider, s3, tmp_path, concurrency):
    gateway = DirectGateway(provider)
    store = S3Store(gateway, part_size=5 * MiB, max_concurrency=concurrency)
    source = tmp_path / "model.bin"
    data = write_file(source, 12 * MiB + 17)
    seen: list[tuple[int, int]] = []
    result = store.upload_file(source, "models/model.bin", progress=lambda done, total: seen.append((done, total)))
    assert result["parts"] == 3 and result["sha256"] == hashlib.sha256(data).hexdigest()
    parts = gateway.ops("s3_upload", "part")
    assert sorted(len(p["body"]) for p in parts) == [2 * MiB + 17, 5 * MiB, 5 * MiB]
    assert sorted(p["part_number"] for p in parts) == [1, 2, 3]
    assert len(gateway.ops("s3_upload", "complete")) == 1
    assert seen[-1] == (len(data), len(data)) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(seen) == 3
    obj = s3.get_object(Bucket=BUCKET, Key="models/model.bin")
    assert obj["Body"].read() == data and obj["Metadata"]["sha256"] == result["sha256"]

    target = tmp_path / "out" / "model.bin"
    got: list[tuple[int, int]] = []
    info = store.download_file("models/model.bin", target, progress=lambda d, t: got.append((d, t)))
    assert target.read_bytes() == data and info["verified"] and info["sha256"] == result["sha256"]
    assert len(gateway.ops("s3_download")) == 3 and got[-1] == (len(data), len(data))
    assert all(p["if_match"] == obj["ETag"] for p in gateway.ops("s3_download"))


def test_store_small_file_is_one_put(provider, s3, tmp_path):
    gateway = DirectGateway(provider)
    store = S3Store(gateway, part_size=5 * MiB)
    source = tmp_path / "tokenizer.json"
    data = write_file(source, 1000)
    calls = []
    assert store.upload_file(source, "tok.json", progress=lambda d, t: calls.append((d, t)))["parts"] == 1
    assert [op for op, _ in gateway.calls] == ["s3_put"] and calls == [(1000, 1000)]
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    store.upload_file(empty, "empty")
    assert store.download_file("empty", tmp_path / "empty.out")["size"] == 0
    assert (tmp_path / "empty.out").read_bytes() == b""
    store.download_file("tok.json", tmp_path / "tok.out")
    assert (tmp_path / "tok.out").read_bytes() == data


def test_failed_part_aborts_the_upload(provider, s3, tmp_path):
    gateway = DirectGateway(provider)
    store = S3Store(gateway, part_size=5 * MiB, max_concurrency=1)
    source = tmp_path / "model.bin"
    write_file(source, 11 * MiB)
    gateway.fail[("s3_upload", "part")] = errors.ProviderError("upstream 500 after retries", provider="s3")
    with pytest.raises(errors.ProviderError, match="after retries"):
        store.upload_file(source, "broken.bin")
    assert len(gateway.ops("s3_upload", "abort")) == 1
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="broken.bin")


def test_download_refuses_content_that_fails_its_sha256(provider, s3, tmp_path):
    store = S3Store(DirectGateway(provider))
    s3.put_object(Bucket=BUCKET, Key="tampered.bin", Body=b"evil bytes",
                  Metadata={"sha256": hashlib.sha256(b"good bytes").hexdigest()})
    target = tmp_path / "tampered.bin"
    with pytest.raises(errors.ProviderError, match="integrity") as info:
        store.download_file("tampered.bin", target)
    assert info.value.code == "sha256_mismatch" and not target.exists()
    assert not list(tmp_path.iterdir())  # no partial file left behind
    assert store.download_file("tampered.bin", target, verify=False)["verified"] is False
    s3.put_object(Bucket=BUCKET, Key="plain.bin", Body=b"no hash")
    assert store.download_file("plain.bin", tmp_path / "plain.bin")["verified"] is False


def test_store_spreads_requests_over_endpoints_of_one_backend(server, s3, tmp_path):
    second = EndpointConfig(id="s3-2", provider="s3", base_url=server.endpoint_url,
                            options={"bucket": BUCKET, "access_key_id": "AKIASECONDKEY00002",
                                     "secret_access_key": "second-secret-value"})
    gateway = DirectGateway(S3Provider(endpoint(server.endpoint_url)), S3Provider(second))
    store = S3Store(gateway, part_size=5 * MiB, max_concurrency=2)
    source = tmp_path / "m.bin"
    data = write_file(source, 11 * MiB)
    store.upload_file(source, f"spread/{uuid.uuid4().hex}.bin")
    key = store.list("spread/")["objects"][0]["key"]
    assert store.get_bytes(key) == data
    assert set(gateway.used) == {"s3-1", "s3-2"}
