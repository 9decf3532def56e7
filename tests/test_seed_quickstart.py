"""Every code block of the seed quickstart, run against the fakes.

The seed documents are in /work/shared/seeds: 001 is the quickstart (every
Python block is here, in order), 000 the README's ``init`` examples, 003 the
``create_endpoint`` / ``get_stats`` example and 004 the LLVM guide (written in
TypeScript there, so translated to the Python names here).

Each block is written out as the seed has it -- same variable names, calls
and prints -- with only credentials and base URLs changed: "your-key-here"
becomes a fake key, and a base-URL metadata key (or environment variable, for
blocks that construct with no arguments) points at a fake server.  The
fakes are configured to serve the model names the seed uses (server-side
``extra_models``), which changes nothing in the blocks.  After each block
come the assertions.

Not runnable, and so not here: the shell blocks that call the seed's test
scripts (``python test_single_api.py ollama`` ...), which are not part of
this project (see docs/porting.md).
"""
from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Iterator
from unittest import mock

import pytest

from ipfs_accelerate_py.api_backends import close_all
from ipfs_accelerate_py.testing.fakes.runner import FakeHandle, start_fake

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

# fake credentials: what replaces "your-key-here"
OPENAI_KEY = "sk-test-quickstart-openai-000101"
ANTHROPIC_KEY = "sk-ant-test-quickstart-000202"
GROQ_KEY = "gsk_testquickstartgroq000303"
HF_TOKEN = "hf_testquickstarttoken000404"
GOOGLE_KEY = "AIzaSyTESTquickstartgoogle000505"
LLVM_KEY = "llvm-test-quickstart-000606"

#: model names the seed uses that the fakes do not serve out of the box, with one attribute
#: each (the Ollama fake skips an extra model whose attributes are empty)
EXTRA_MODELS = {
    "groq": {"llama3-8b-8192": {"owned_by": "Meta"}, "llama3-70b-8192": {"owned_by": "Meta"}},
    "gemini": {name: {"display_name": name} for name in ("gemini-1.0-pro", "gemini-1.5-pro-vision", "gemini-pro")},
    "ollama": {"llama3": {"family": "llama"}, "llama2": {"family": "llama"}},
    "claude": {"claude-3-opus": {"display_name": "Claude 3 Opus"}},
    "llvm": {"my-model": {"description": "the README's model"}},
}
PROTOCOLS = ("openai", "claude", "groq", "gemini", "ollama", "hf_tgi", "hf_tei", "llvm")
#: the provider variables a developer's shell might hold; cleared for every test
_PROVIDER_VARS = re.compile(r"^(OPENAI|ANTHROPIC|CLAUDE|GROQ|GOOGLE|GEMINI|HF|TGI|TEI|OLLAMA|LLVM|OVMS|OPEA|S3|"
                            r"AWS|IPFS_ACCELERATE)_")


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeHandle]]:
    handles: dict[str, FakeHandle] = {}
    try:
        for protocol in PROTOCOLS:
            extra = EXTRA_MODELS.get(protocol)
            handles[protocol] = start_fake(protocol, controls={"extra_models": extra} if extra else None)
        yield handles
    finally:
        for handle in handles.values():
            handle.stop()


@pytest.fixture
def f(fakes: dict[str, FakeHandle]) -> dict[str, FakeHandle]:
    """The fakes, reset (stats, faults, keys) for this test."""
    for handle in fakes.values():
        handle.reset(valid_keys=[])
    return fakes


@pytest.fixture(autouse=True)
def seed_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No provider variables from the developer's shell, an empty working
    directory (so no stray .env), and no gateway left running afterwards."""
    for name in list(os.environ):
        if _PROVIDER_VARS.match(name):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    close_all()


def export_method_1(monkeypatch: pytest.MonkeyPatch, f: dict[str, FakeHandle]) -> None:
    """The quickstart's "Method 1: Environment Variables" block with fake values,
    plus the base-URL variables that point each provider at its fake."""
    # export OPENAI_API_KEY="your-key-here" ... export OLLAMA_MODEL="llama3"
    for name, value in {
        "OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY, "GROQ_API_KEY": GROQ_KEY,
        "HF_API_TOKEN": HF_TOKEN, "GOOGLE_API_KEY": GOOGLE_KEY,
        "OLLAMA_API_URL": f["ollama"].root_url + "/api", "OLLAMA_MODEL": "llama3",
        # base URLs of the fakes
        "OPENAI_BASE_URL": f["openai"].base_url, "ANTHROPIC_BASE_URL": f["claude"].base_url,
        "GROQ_BASE_URL": f["groq"].base_url, "GEMINI_BASE_URL": f["gemini"].base_url,
        "HF_TGI_URL": f["hf_tgi"].base_url, "HF_TEI_URL": f["hf_tei"].base_url,
    }.items():
        monkeypatch.setenv(name, value)


def printed_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What the block printed, without notices Ray's raylet pushes to every driver."""
    return [line for line in capsys.readouterr().out.splitlines() if "(raylet)" not in line]


def write_image(path: str) -> None:
    from PIL import Image
    Image.new("RGB", (8, 8), (200, 40, 40)).save(path, format="JPEG")


# ---------------------------------------------------------------------------
# Setting Up Credentials
# ---------------------------------------------------------------------------

def test_credentials_method_1_environment_variables(f, monkeypatch):
    export_method_1(monkeypatch, f)
    from ipfs_accelerate_py.api_backends import claude, gemini, groq, hf_tei, hf_tgi, ollama, openai_api

    # every class finds its own provider's variables, and only those
    clients = [openai_api(), claude(), groq(), gemini(), ollama(), hf_tgi(), hf_tei()]
    for client in clients:
        endpoints = client._shared.config.endpoints
        assert [ep.provider for ep in endpoints] == [client.PROVIDER]
    assert clients[4]._shared.template.default_model == "llama3"  # OLLAMA_MODEL
    assert clients[0].chat("gpt-4o", [{"role": "user", "content": "env"}])["text"] == "Echo: env"
    assert f["openai"].key_stats(OPENAI_KEY)["ok"] == 1


def test_credentials_method_2_dotenv_file(f):
    # Create a `.env` file in your project directory:
    Path(".env").write_text(
        f"OPENAI_API_KEY={OPENAI_KEY}\nANTHROPIC_API_KEY={ANTHROPIC_KEY}\nGROQ_API_KEY={GROQ_KEY}\n"
        f"GOOGLE_API_KEY={GOOGLE_KEY}\nHF_API_TOKEN={HF_TOKEN}\n"
        f"OLLAMA_API_URL={f['ollama'].root_url}/api\nOLLAMA_MODEL=llama3\n"
        f"OPENAI_BASE_URL={f['openai'].base_url}\nGROQ_BASE_URL={f['groq'].base_url}\n")
    from ipfs_accelerate_py.api_backends import groq, ollama, openai_api

    assert openai_api().chat("gpt-4o", [{"role": "user", "content": "dotenv"}])["text"] == "Echo: dotenv"
    assert groq().chat("llama3-8b-8192", [{"role": "user", "content": "dotenv"}])["text"] == "Echo: dotenv"
    assert ollama().chat(None, [{"role": "user", "content": "dotenv"}])["text"]  # OLLAMA_MODEL from .env
    assert f["openai"].key_stats(OPENAI_KEY)["ok"] == 1 and f["groq"].key_stats(GROQ_KEY)["ok"] == 1


def test_credentials_method_3_metadata_dictionary(f):
    metadata = {
        "openai_api_key": OPENAI_KEY,
        "anthropic_api_key": ANTHROPIC_KEY,
        "groq_api_key": GROQ_KEY,
        "hf_api_token": HF_TOKEN,
        "google_api_key": GOOGLE_KEY,
        "ollama_api_url": f["ollama"].root_url + "/api",
        "ollama_model": "llama3",
        # base URLs of the fakes
        "openai_base_url": f["openai"].base_url, "anthropic_base_url": f["claude"].base_url,
    }
    from ipfs_accelerate_py.api_backends import claude, ollama, openai_api

    # one dict for every class: each takes its own provider's keys
    messages = [{"role": "user", "content": "meta"}]
    assert openai_api(resources={}, metadata=metadata).chat("gpt-4o", messages)["text"] == "Echo: meta"
    assert claude(resources={}, metadata=metadata).chat(messages)["text"]
    assert ollama(resources={}, metadata=metadata).chat("llama3", messages)["text"]
    assert f["claude"].key_stats(ANTHROPIC_KEY)["ok"] == 1


# ---------------------------------------------------------------------------
# Using each API
# ---------------------------------------------------------------------------

def test_using_openai_api(f, capsys):
    from ipfs_accelerate_py.api_backends import openai_api

    # Initialize the API with credentials
    metadata = {"openai_api_key": OPENAI_KEY, "openai_base_url": f["openai"].base_url}
    openai = openai_api(resources={}, metadata=metadata)

    # Chat completion
    messages = [{"role": "user", "content": "Hello, how are you?"}]
    response = openai.chat("gpt-4o", messages, prompt=None, system="You are a helpful assistant",
                           temperature=0.7, max_tokens=100)
    print(response["text"])

    # Embeddings
    embedding_response = openai.embedding("text-embedding-3-small", "This is a sample text", "float")
    print(embedding_response["embedding"])  # Prints the embedding vector

    # Image generation
    image_response = openai.text_to_image("dall-e-3", "1024x1024", 1,
                                          "A serene lakeside sunset with mountains in the background")
    print(image_response["urls"])  # Prints the image URLs

    assert response["text"] == "Echo: Hello, how are you?"
    assert len(embedding_response["embedding"]) == 1536
    assert len(image_response["urls"]) == 1 and image_response["urls"][0].startswith("http")
    assert "Echo: Hello, how are you?" in capsys.readouterr().out
    assert f["openai"].key_stats(OPENAI_KEY)["ok"] == 3


def test_using_claude_api(f, capsys):
    from ipfs_accelerate_py.api_backends import claude

    # Initialize the API with credentials
    metadata = {"anthropic_api_key": ANTHROPIC_KEY, "anthropic_base_url": f["claude"].base_url}
    claude_api = claude(resources={}, metadata=metadata)

    # Chat completion
    messages = [{"role": "user", "content": "Hello, how are you?"}]
    response = claude_api.chat(messages)
    print(response["text"])

    # Streaming
    for chunk in claude_api.stream_chat(messages):
        print(chunk["text"], end="", flush=True)
    print()

    out = capsys.readouterr().out.splitlines()
    assert response["text"] and out[0] == response["text"]
    assert out[1] == response["text"]  # the streamed pieces joined are the same answer
    assert f["claude"].key_stats(ANTHROPIC_KEY)["ok"] == 2


def test_using_ollama_api(f, capsys):
    from ipfs_accelerate_py.api_backends import ollama

    # Initialize the API with credentials
    metadata = {"ollama_api_url": f["ollama"].root_url + "/api"}
    ollama_api = ollama(resources={}, metadata=metadata)

    # List available models
    models = ollama_api.list_models()
    print(f"Available models: {len(models)} found")

    # Chat completion
    messages = [{"role": "user", "content": "Hello, how are you?"}]
    response = ollama_api.chat("llama3", messages)
    print(response["text"])

    # Streaming
    for chunk in ollama_api.stream_chat("llama3", messages):
        print(chunk["text"], end="", flush=True)
    print()

    out = capsys.readouterr().out.splitlines()
    assert len(models) >= 10 and "llama3:latest" in {m["id"] for m in models}
    assert out[0] == f"Available models: {len(models)} found"
    assert response["text"] and out[2] == response["text"]


def test_using_hugging_face_tgi(f, capsys):
    from ipfs_accelerate_py.api_backends import hf_tgi

    # Initialize the API with credentials
    metadata = {"hf_api_token": HF_TOKEN, "hf_tgi_url": f["hf_tgi"].base_url}
    tgi_api = hf_tgi(resources={}, metadata=metadata)

    # Generate text
    response = tgi_api.generate_text(
        "mistralai/Mistral-7B-Instruct-v0.2",
        "Explain the concept of quantum computing in simple terms.",
        parameters={"max_new_tokens": 100}
    )
    print(response["generated_text"])

    # Chat (if available)
    if hasattr(tgi_api, "chat"):
        messages = [{"role": "user", "content": "Hello, how are you?"}]
        response = tgi_api.chat("mistralai/Mistral-7B-Instruct-v0.2", messages)
        print(response["text"])

    out = capsys.readouterr().out.splitlines()
    assert out == ["Echo: Explain the concept of quantum computing in simple terms.", "Echo: Hello, how are you?"]
    assert f["hf_tgi"].stats()["by_path"] == {"/generate": 1, "/v1/chat/completions": 1}
    assert f["hf_tgi"].key_stats(HF_TOKEN)["ok"] == 2


def test_using_hugging_face_tei(f, capsys):
    from ipfs_accelerate_py.api_backends import hf_tei
    import numpy as np  # noqa: F401 - imported by the seed block

    # Initialize the API with credentials
    metadata = {"hf_api_token": HF_TOKEN, "hf_tei_url": f["hf_tei"].base_url}
    tei_api = hf_tei(resources={}, metadata=metadata)

    # Generate embedding
    embedding = tei_api.generate_embedding(
        "sentence-transformers/all-MiniLM-L6-v2",
        "This is a text to create an embedding from."
    )
    print(f"Embedding dimensionality: {len(embedding)}")

    # Batch embeddings
    texts = ["First sentence to embed.", "Second sentence to embed."]
    embeddings = tei_api.batch_embed("sentence-transformers/all-MiniLM-L6-v2", texts)
    print(f"Generated {len(embeddings)} embeddings")

    # Calculate similarity
    similarity = tei_api.calculate_similarity(embeddings[0], embeddings[1])
    print(f"Similarity between texts: {similarity}")

    assert len(embedding) == 384 and all(isinstance(x, float) for x in embedding)
    assert len(embeddings) == 2 and embeddings[0] != embeddings[1]
    assert -1.0 <= similarity < 0.999
    assert tei_api.calculate_similarity(embeddings[0], embeddings[0]) == pytest.approx(1.0)
    assert "Generated 2 embeddings" in capsys.readouterr().out


def test_using_groq_api(f, capsys):
    from ipfs_accelerate_py.api_backends import groq

    # Initialize the API with credentials
    metadata = {"groq_api_key": GROQ_KEY, "groq_base_url": f["groq"].base_url}
    groq_api = groq(resources={}, metadata=metadata)

    # Basic chat completion
    messages = [{"role": "user", "content": "Hello, how are you?"}]
    response = groq_api.chat("llama3-8b-8192", messages)
    print(response["text"])

    # Advanced chat completion with parameters
    system_message = "You are a concise assistant who always responds in bullet points"
    messages = [
        {"role": "system", "content": system_message},
        {"role": "user", "content": "Explain quantum computing"}
    ]

    response = groq_api.chat(
        model_name="llama3-70b-8192",  # Larger model for complex topics
        messages=messages,
        temperature=0.3,               # Lower temperature for more deterministic responses
        max_tokens=500,                # Control response length
        top_p=0.9,                     # Nucleus sampling parameter
        top_k=40,                      # Limit to top 40 tokens
        frequency_penalty=0.5,         # Reduce repetition
        presence_penalty=0.2           # Discourage repeated topics
    )
    print(response["text"])
    print(f"Usage statistics: {response.get('usage', {})}")
    advanced = response

    # JSON response format
    # As written, the seed's call is refused by Groq itself (and by the fake, which
    # copies the rule): json_object mode needs the word "json" in the messages.
    # The facade does not rewrite prompts, so the verbatim call fails clearly...
    with pytest.raises(ValueError, match="must contain the word 'json'"):
        response = groq_api.chat(
            "llama3-8b-8192",
            [{"role": "user", "content": "List the planets in the solar system"}],
            response_format={"type": "json_object"}
        )
    # ...and with the one-word fix docs/porting.md gives, it runs
    response = groq_api.chat(
        "llama3-8b-8192",
        [{"role": "user", "content": "List the planets in the solar system as JSON"}],
        response_format={"type": "json_object"}
    )
    print(response["text"])

    # Streaming with progress tracking
    print("Streaming response: ", end="")
    accumulated = ""
    for chunk in groq_api.stream_chat("llama3-8b-8192", messages):
        print(chunk["text"], end="", flush=True)
        accumulated += chunk["text"]

        # Progress tracking
        if len(accumulated) % 100 == 0:
            print(f"\nReceived {len(accumulated)} characters so far...", end="")
    print("\nDone!")

    assert advanced["text"] == "Echo: Explain quantum computing"
    assert advanced["usage"]["total_tokens"] > 0 and advanced["usage"]["prompt_tokens"] > 0
    assert response["text"]
    assert accumulated == "Echo: Explain quantum computing"
    out = capsys.readouterr().out
    assert out.startswith("Echo: Hello, how are you?\n") and out.rstrip().endswith("Done!")
    assert f["groq"].key_stats(GROQ_KEY)["ok"] == 4 and f["groq"].stats()["by_status"]["400"] == 1


def test_using_gemini_api(f, capsys):
    write_image("test.jpg")  # the seed's "Path to your image"
    from ipfs_accelerate_py.api_backends import gemini

    # Initialize the API with credentials
    metadata = {"google_api_key": GOOGLE_KEY, "gemini_base_url": f["gemini"].base_url}
    gemini_api = gemini(resources={}, metadata=metadata)

    # Chat completion
    messages = [{"role": "user", "content": "Hello, how are you?"}]
    response = gemini_api.chat(messages, model="gemini-1.0-pro")
    print(response["text"])

    # Multimodal input (image + text)
    import base64  # noqa: F401 - imported by the seed block
    from pathlib import Path

    # Load an image
    image_path = Path("test.jpg")  # Path to your image
    with open(image_path, "rb") as image_file:
        image_data = image_file.read()

    # Process image with text prompt
    response = gemini_api.process_image(
        image_data=image_data,
        prompt="Describe this image in detail",
        model="gemini-1.5-pro-vision"
    )
    print(response["text"])
    vision = response

    # Streaming response
    done = []
    for chunk in gemini_api.stream_chat(messages, model="gemini-1.0-pro"):
        print(chunk["text"], end="", flush=True)
        if chunk["done"]:
            print("\nResponse complete")
            done.append(chunk)

    assert vision["text"] and vision["model"].startswith("gemini-1.5-pro-vision")
    assert len(done) == 1
    out = capsys.readouterr().out
    assert out.startswith("Echo: Hello, how are you?\n") and out.rstrip().endswith("Response complete")
    assert f["gemini"].key_stats(GOOGLE_KEY)["ok"] == 3


# ---------------------------------------------------------------------------
# Advanced Features
# ---------------------------------------------------------------------------

def test_groq_api_models_and_capabilities(capsys):
    from ipfs_accelerate_py.api_backends import groq

    # Initialize API client
    groq_api = groq(resources={}, metadata={"groq_api_key": GROQ_KEY})

    # List all available models
    all_models = groq_api.list_models()
    print(f"Total models available: {len(all_models)}")

    # List only chat-capable models
    chat_models = groq_api.list_models("chat")
    print(f"Chat models available: {len(chat_models)}")

    # List vision models
    vision_models = groq_api.list_models("vision")
    print(f"Vision models available: {len(vision_models)}")

    # List audio models
    audio_models = groq_api.list_models("audio")
    print(f"Audio models available: {len(audio_models)}")

    # Check model compatibility
    model_name = "mistral-saba-24b"
    is_compatible = groq_api.is_compatible_model(model_name, "chat")
    print(f"Is {model_name} compatible with chat: {is_compatible}")

    # Print model details
    for model in chat_models[:3]:  # First 3 chat models
        print(f"Model: {model['id']}")
        print(f"  Description: {model['description']}")
        print(f"  Context window: {model['context_window']}")
        print(f"  Category: {model['category']}")

    assert len(all_models) == len(chat_models) + len(vision_models) + len(audio_models)
    assert chat_models and vision_models and audio_models and is_compatible is True
    assert not groq_api.is_compatible_model("whisper-large-v3", "chat")
    assert capsys.readouterr().out.count("  Category: chat") == 3
    assert not groq_api._shared.started  # the catalog is local: no gateway, no Ray call


def test_usage_tracking_and_statistics(f, capsys):
    messages = [{"role": "user", "content": "Hello, how are you?"}]  # from the Groq section above
    from ipfs_accelerate_py.api_backends import groq

    # Initialize the API
    groq_api = groq(resources={}, metadata={"groq_api_key": GROQ_KEY, "groq_base_url": f["groq"].base_url})

    # Make API calls...
    response = groq_api.chat("llama3-8b-8192", messages)

    # Get detailed usage statistics (if supported)
    if hasattr(groq_api, "get_usage_stats"):
        stats = groq_api.get_usage_stats()
        print(f"Total tokens used: {stats['total_tokens']}")
        print(f"Estimated cost: ${stats.get('estimated_cost_usd', 'N/A')}")
        print(f"Total requests: {stats['total_requests']}")

        # Reset usage statistics if needed
        groq_api.reset_usage_stats()

    assert response["text"]
    assert stats["total_requests"] == 1 and stats["total_tokens"] == response["usage"]["total_tokens"] > 0
    assert stats["estimated_cost_usd"] >= 0
    assert groq_api.get_usage_stats()["total_requests"] == 0  # reset
    assert "Total requests: 1" in capsys.readouterr().out


def test_request_queueing_and_concurrency_control(f, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f["openai"].base_url)
    from ipfs_accelerate_py.api_backends import openai_api

    # Initialize the API
    client = openai_api()

    # Configure concurrency
    client.max_concurrent_requests = 3  # Process up to 3 requests at once
    client.queue_size = 50              # Queue up to 50 pending requests

    # Any requests beyond the concurrent limit will be queued automatically
    # You don't need to do anything special to use the queue

    # Create multiple endpoints with different settings
    endpoint_id = client.create_endpoint(
        api_key="different-api-key",    # Use a different API key
        max_concurrent_requests=10,     # Higher concurrency for this endpoint
        queue_size=100                  # Larger queue for this endpoint
    )

    # Use the specific endpoint for requests
    response = client.chat(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Hello"}],
        endpoint_id=endpoint_id          # Use the specific endpoint
    )

    assert response["text"] == "Echo: Hello" and response["endpoint_id"] == endpoint_id
    assert f["openai"].key_stats("different-api-key")["ok"] == 1
    assert f["openai"].key_stats(OPENAI_KEY)["requests"] == 0
    info = client.get_queue_info()
    assert info["capacity"] == 100  # the one gateway queue grew to the larger bound
    assert info["endpoints"][endpoint_id]["max_concurrent"] == 10
    (default_id,) = [eid for eid in info["endpoints"] if eid != endpoint_id]
    assert info["endpoints"][default_id]["max_concurrent"] == 3

    # -- 3. Exponential Backoff with Circuit Breaker (the same client) --
    # Customize backoff behavior
    client.max_retries = 5           # Maximum retry attempts
    client.initial_retry_delay = 1   # Initial delay in seconds
    client.backoff_factor = 2        # Multiply delay by this factor on each retry
    client.max_retry_delay = 30      # Maximum delay in seconds

    # Circuit breaker configuration (when available)
    client.failure_threshold = 5     # Number of failures before opening circuit
    client.reset_timeout = 30        # Seconds to wait before trying half-open

    # Get circuit breaker status
    if hasattr(client, "circuit_state"):
        print(f"Current circuit state: {client.circuit_state}")  # CLOSED, OPEN, or HALF_OPEN

    router = client.gateway.configure()
    assert (router["max_retries"], router["initial_retry_delay"], router["backoff_factor"],
            router["max_retry_delay"]) == (5, 1, 2, 30)
    assert client.circuit_failure_threshold == 5 and client.circuit_reset_timeout == 30
    assert client.circuit_state == "CLOSED"


def test_environment_variables_and_dotenv_support(f):
    # Create a .env file
    # OPENAI_API_KEY=your-key-here
    Path(".env").write_text(f"OPENAI_API_KEY={OPENAI_KEY}\nOPENAI_BASE_URL={f['openai'].base_url}\n")
    with mock.patch.dict(os.environ):  # load_dotenv writes os.environ: undo it after the block
        from ipfs_accelerate_py.api_backends import openai_api
        from dotenv import load_dotenv

        # Load credentials from .env file
        load_dotenv()  # This happens automatically in the API backends

        # API key will be loaded automatically
        client = openai_api()  # No explicit API key needed

        assert client.chat("gpt-4o", [{"role": "user", "content": "from .env"}])["text"] == "Echo: from .env"
    assert f["openai"].key_stats(OPENAI_KEY)["ok"] == 1


def test_creating_endpoint_handlers(f, monkeypatch):
    export_method_1(monkeypatch, f)

    # Create endpoint handlers for each API type
    from ipfs_accelerate_py.api_backends import openai_api, claude, groq, ollama, hf_tgi, hf_tei, gemini

    # OpenAI endpoint handler
    openai_client = openai_api()
    openai_handler = openai_client.create_chat_endpoint_handler("gpt-3.5-turbo")

    # Claude endpoint handler
    claude_client = claude()
    claude_handler = claude_client.create_claude_endpoint_handler()

    # Groq endpoint handler
    groq_client = groq()
    groq_handler = groq_client.create_groq_endpoint_handler()

    # Ollama endpoint handler
    ollama_client = ollama()
    ollama_handler = ollama_client.create_ollama_endpoint_handler()

    # HF TGI endpoint handler
    hf_tgi_client = hf_tgi()
    hf_tgi_handler = hf_tgi_client.create_remote_text_generation_endpoint_handler()

    # HF TEI endpoint handler
    hf_tei_client = hf_tei()
    hf_tei_handler = hf_tei_client.create_remote_text_embedding_endpoint_handler()

    # Gemini endpoint handler
    gemini_client = gemini()
    gemini_handler = gemini_client.create_gemini_endpoint_handler()

    # Use any handler with a standardized interface
    async def process_prompt(prompt, handler):
        result = await handler(prompt)
        return result["text"]

    async def run_all() -> list[str]:
        handlers = [openai_handler, claude_handler, groq_handler, ollama_handler, hf_tgi_handler, gemini_handler]
        return list(await asyncio.gather(*(process_prompt("What is IPFS?", h) for h in handlers)))

    texts = asyncio.run(run_all())
    assert texts[0] == "Echo: What is IPFS?" and texts[4] == "Echo: What is IPFS?"
    assert all(texts), texts
    embedded = asyncio.run(hf_tei_handler_result(hf_tei_handler))
    assert len(embedded["embedding"]) == 384  # an embedding handler answers with the vector, not text
    for name in ("openai", "claude", "groq", "ollama", "gemini"):
        assert f[name].stats()["by_status"] == {"200": 1}, name
    assert f["hf_tgi"].stats()["by_path"] == {"/generate": 1}  # a text-generation handler calls /generate


async def hf_tei_handler_result(handler):
    return await handler("What is IPFS?")


def test_error_handling_with_a_bad_key(f, capsys):
    f["groq"].controls(valid_keys=[GROQ_KEY])
    from ipfs_accelerate_py.api_backends import groq

    groq_api = groq(resources={}, metadata={"groq_api_key": "gsk_this_key_is_revoked_0909",
                                            "groq_base_url": f["groq"].base_url})

    try:
        messages = [{"role": "user", "content": "Hello, how are you?"}]
        response = groq_api.chat("llama3-8b-8192", messages)
        print(response["text"])
    except ValueError as e:
        if "Authentication error" in str(e):
            print("API key is invalid or expired")
        elif "Rate limit" in str(e):
            print("Rate limit exceeded, please try again later")
        else:
            print(f"API error: {str(e)}")
    except Exception as e:
        print(f"Unexpected error: {str(e)}")

    assert capsys.readouterr().out == "API key is invalid or expired\n"
    assert f["groq"].stats()["by_status"] == {"401": 1}  # a bad key is not retried


def test_error_handling_when_rate_limited(f, capsys):
    f["groq"].controls(faults=[{"kind": "status", "status": 429, "count": 1000, "retry_after": 0}])
    from ipfs_accelerate_py.api_backends import groq

    groq_api = groq(resources={}, metadata={"groq_api_key": GROQ_KEY, "groq_base_url": f["groq"].base_url})

    try:
        messages = [{"role": "user", "content": "Hello, how are you?"}]
        response = groq_api.chat("llama3-8b-8192", messages)
        print(response["text"])
    except ValueError as e:
        if "Authentication error" in str(e):
            print("API key is invalid or expired")
        elif "Rate limit" in str(e):
            print("Rate limit exceeded, please try again later")
        else:
            print(f"API error: {str(e)}")
    except Exception as e:
        print(f"Unexpected error: {str(e)}")

    assert capsys.readouterr().out == "Rate limit exceeded, please try again later\n"
    assert f["groq"].stats()["by_status"]["429"] > 1  # retried before giving up


# ---------------------------------------------------------------------------
# Advanced Features Added (March 2025)
# ---------------------------------------------------------------------------

def test_queue_and_backoff_system(f, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f["openai"].base_url)
    # Configure queue and backoff settings
    from ipfs_accelerate_py.api_backends import openai_api

    client = openai_api()

    # Configure queue settings
    client.queue_enabled = True               # Enable/disable queue (default: True)
    client.max_concurrent_requests = 5        # Max concurrent requests (default: 5)
    client.queue_size = 100                   # Maximum queue size (default: 100)

    # Configure backoff settings
    client.max_retries = 5                    # Max retry attempts (default: 5)
    client.initial_retry_delay = 1            # Initial delay in seconds (default: 1)
    client.backoff_factor = 2                 # Multiplier for each retry (default: 2)
    client.max_retry_delay = 60               # Maximum delay cap in seconds (default: 60)

    # Send request with a unique request ID for tracking
    response = client.chat(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Hello"}],
        request_id="req_12345"                # Optional custom ID for tracking
    )

    # Check queue status (if supported)
    if hasattr(client, "get_queue_info"):
        info = client.get_queue_info()
        print(f"Queue size: {info.get('size', 0)} requests")
        print(f"Active requests: {info.get('active_requests', 0)}")
        print(f"Queue capacity: {info.get('capacity', 0)}")

    assert response["request_id"] == "req_12345" and response["text"] == "Echo: Hello"
    assert printed_lines(capsys) == ["Queue size: 0 requests", "Active requests: 0",
                                                    "Queue capacity: 100"]
    assert client.get_stats()["total_requests"] == 1
    assert client.gateway.configure()["max_retry_delay"] == 60


def test_priority_queue_system(f, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f["openai"].base_url)
    # Example usage of priority queue
    from ipfs_accelerate_py.api_backends import openai_api

    client = openai_api()

    # Set request priority
    response = client.chat(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Critical task"}],
        priority="HIGH"  # Will be processed before NORMAL and LOW priority requests
    )

    # Check queue status
    if hasattr(client, "get_queue_status"):
        status = client.get_queue_status()
        print(f"High priority queue: {status.get('high_priority', 0)} requests")
        print(f"Normal priority queue: {status.get('normal_priority', 0)} requests")
        print(f"Low priority queue: {status.get('low_priority', 0)} requests")

    assert response["text"] == "Echo: Critical task"
    assert printed_lines(capsys) == ["High priority queue: 0 requests",
                                                    "Normal priority queue: 0 requests",
                                                    "Low priority queue: 0 requests"]


def test_circuit_breaker_pattern(f, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f["openai"].base_url)
    from ipfs_accelerate_py.api_backends import openai_api
    client = openai_api()  # the `client` of the blocks above
    client.chat("gpt-4o", [{"role": "user", "content": "warm up"}])

    # Configure circuit breaker
    client.circuit_failure_threshold = 5  # Number of failures before opening circuit
    client.circuit_reset_timeout = 30     # Seconds before trying half-open state
    client.circuit_success_threshold = 3  # Successes needed to close circuit

    # Check circuit state
    if hasattr(client, "get_circuit_state"):
        state = client.get_circuit_state()
        print(f"Circuit state: {state}")  # CLOSED, OPEN, or HALF-OPEN

        # Get detailed circuit metrics
        metrics = client.get_circuit_metrics()
        print(f"Recent failures: {metrics.get('recent_failures', 0)}")
        print(f"Failure rate: {metrics.get('failure_rate', 0):.2f}%")

    assert printed_lines(capsys) == ["Circuit state: CLOSED", "Recent failures: 0",
                                                    "Failure rate: 0.00%"]
    assert metrics["recent_requests"] == 1
    assert (client.circuit_failure_threshold, client.circuit_reset_timeout,
            client.circuit_success_threshold) == (5, 30, 3)


def test_api_key_multiplexing(f, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f["openai"].base_url)
    # Configure multiple API keys
    from ipfs_accelerate_py.api_backends import openai_api

    client = openai_api()

    # Add multiple API keys
    client.add_api_key("key1", "sk-abc123...")
    client.add_api_key("key2", "sk-def456...")
    client.add_api_key("key3", "sk-ghi789...")

    # Set selection strategy
    client.key_selection_strategy = "least-loaded"  # or "round-robin"

    # Use specific key if needed
    response = client.chat(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Hello"}],
        api_key_name="key2"  # Use this specific key
    )

    # Get key usage statistics
    if hasattr(client, "get_key_usage_stats"):
        stats = client.get_key_usage_stats()
        for key_name, usage in stats.items():
            print(f"Key: {key_name}")
            print(f"  Requests: {usage.get('requests', 0)}")
            print(f"  Tokens: {usage.get('tokens', 0)}")
            print(f"  Cost: ${usage.get('cost', 0):.4f}")

    assert response["text"] == "Echo: Hello"
    assert f["openai"].key_stats("sk-def456...")["ok"] == 1
    assert stats["key2"]["requests"] == 1 and stats["key2"]["tokens"] == response["usage"]["total_tokens"]
    assert stats["key1"]["requests"] == 0 and stats["key3"]["requests"] == 0
    assert client.gateway.stats()["strategy"] == "least-loaded"
    assert "Key: key2\n  Requests: 1\n" in capsys.readouterr().out


def test_semantic_caching(f, monkeypatch, capsys):
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f["claude"].base_url)
    # Enable semantic caching
    from ipfs_accelerate_py.api_backends import claude

    client = claude()

    # Configure semantic cache
    client.enable_semantic_cache(
        similarity_threshold=0.92,     # 0.0-1.0, higher means more strict matching
        cache_size=1000,               # Maximum number of entries to store
        ttl=3600,                      # Time-to-live in seconds
        embedding_model="mini"         # Model to use for embeddings
    )

    # Cache will be used automatically for similar requests
    response1 = client.chat([{"role": "user", "content": "Explain quantum computing"}])
    response2 = client.chat([{"role": "user", "content": "What is quantum computing?"}])
    # Second request might use cached response if similarity exceeds threshold

    # Get cache statistics
    if hasattr(client, "get_cache_stats"):
        stats = client.get_cache_stats()
        print(f"Cache hits: {stats.get('hits', 0)}")
        print(f"Cache misses: {stats.get('misses', 0)}")
        print(f"Hit rate: {stats.get('hit_rate', 0):.2f}%")
        print(f"Estimated savings: ${stats.get('cost_savings', 0):.4f}")

    assert response1["text"] and response2["text"] and response1["cached"] is False
    assert stats["hits"] + stats["misses"] == 2
    upstream = f["claude"].stats()["requests"]
    # the repeated prompt is answered from the cache, not upstream
    response3 = client.chat([{"role": "user", "content": "Explain quantum computing"}])
    assert response3["cached"] is True and response3["text"] == response1["text"]
    assert f["claude"].stats()["requests"] == upstream
    after = client.get_cache_stats()
    assert after["hits"] == stats["hits"] + 1
    assert after["hit_rate"] == pytest.approx(100.0 * after["hits"] / (after["hits"] + after["misses"]))
    assert "Cache misses:" in capsys.readouterr().out


def test_request_batching(f, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f["openai"].base_url)
    # Configure request batching for embedding operations
    from ipfs_accelerate_py.api_backends import openai_api

    client = openai_api()

    # Enable batching for embeddings
    client.enable_embedding_batching(
        max_batch_size=20,     # Maximum items in a batch
        batch_timeout=0.1,     # Seconds to wait for batch to fill
        auto_batching=True     # Automatically batch compatible requests
    )

    # Multiple single requests will be automatically batched together
    import concurrent.futures

    # These will likely be batched together for efficiency
    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as executor:
        futures = []
        for i in range(10):
            future = executor.submit(
                client.embedding,
                "text-embedding-3-small",
                f"This is text sample {i}",
                "float"
            )
            futures.append(future)

        # Get results
        results = [future.result() for future in futures]

    # Get batching statistics
    if hasattr(client, "get_batching_stats"):
        stats = client.get_batching_stats()
        print(f"Batches processed: {stats.get('batches', 0)}")
        print(f"Requests batched: {stats.get('batched_requests', 0)}")
        print(f"Average batch size: {stats.get('avg_batch_size', 0):.1f}")
        print(f"Estimated savings: ${stats.get('cost_savings', 0):.4f}")

    assert len(results) == 10 and all(len(r["embedding"]) == 1536 for r in results)
    assert len({tuple(r["embedding"][:4]) for r in results}) == 10  # each caller got its own vector
    assert stats["batched_requests"] == 10
    assert 1 <= stats["batches"] < 10  # coalesced: fewer upstream calls than callers
    assert f["openai"].stats()["by_path"]["/v1/embeddings"] == stats["batches"]
    assert "Requests batched: 10" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# 003: creating an endpoint and reading its statistics
# ---------------------------------------------------------------------------

def test_creating_an_endpoint_and_getting_statistics(f, capsys):
    # Initialize API client
    from ipfs_accelerate_py.api_backends import claude
    claude_client = claude(resources={}, metadata={"claude_api_key": ANTHROPIC_KEY,
                                                   "claude_base_url": f["claude"].base_url})

    # Create an endpoint with custom settings
    endpoint_id = claude_client.create_endpoint(
        api_key="sk-ant-test-endpoint-specific-0707",
        max_retries=3,
        initial_retry_delay=2,
        backoff_factor=3,
        max_concurrent_requests=10
    )

    # Use the endpoint for requests
    response = claude_client.chat(
        messages=[{"role": "user", "content": "Hello"}],
        endpoint_id=endpoint_id,
        request_id="custom_request_id_123"
    )

    # Get statistics for a specific endpoint
    stats = claude_client.get_stats(endpoint_id)
    print(f"Total requests: {stats['total_requests']}")
    print(f"Total tokens: {stats['total_tokens']}")

    # Get aggregate statistics across all endpoints
    all_stats = claude_client.get_stats()
    print(f"Total endpoints: {all_stats['endpoints_count']}")
    print(f"Total requests across all endpoints: {all_stats['total_requests']}")

    assert response["request_id"] == "custom_request_id_123" and response["endpoint_id"] == endpoint_id
    assert stats["total_requests"] == 1 and stats["total_tokens"] == response["usage"]["total_tokens"] > 0
    assert all_stats["endpoints_count"] == 2 and all_stats["total_requests"] == 1
    assert f["claude"].key_stats("sk-ant-test-endpoint-specific-0707")["ok"] == 1
    assert capsys.readouterr().out.splitlines()[2:] == ["Total endpoints: 2",
                                                        "Total requests across all endpoints: 1"]


# ---------------------------------------------------------------------------
# 000: the README's init() examples
# ---------------------------------------------------------------------------

def test_readme_llvm_backend(f, monkeypatch):
    monkeypatch.setenv("LLVM_API_KEY", LLVM_KEY)
    from ipfs_accelerate_py.api_backends import llvm

    # Initialize backend
    llvm_backend = llvm()

    # Get endpoint handler
    endpoint_url, api_key, handler, queue, batch_size = llvm_backend.init(
        endpoint_url=f["llvm"].base_url,
        model_name="my-model",
        endpoint_type="chat"  # or "completion", "streaming"
    )

    # Use handler for generation
    messages = [
        {"role": "user", "content": "Hello! How are you?"}
    ]
    response = handler(messages)

    assert response["text"] and response["model"] == "my-model"
    assert endpoint_url == f["llvm"].base_url and api_key is None and batch_size == 1
    assert queue.qsize() == 0 and queue.maxsize == llvm_backend.queue_size
    assert f["llvm"].key_stats(LLVM_KEY)["ok"] == 1  # the environment's key, at the given URL


def test_readme_ollama_backend(f):
    from ipfs_accelerate_py.api_backends import ollama

    # Initialize backend
    ollama_backend = ollama()

    # Get endpoint handler
    endpoint_url, api_key, handler, queue, batch_size = ollama_backend.init(
        endpoint_url=f["ollama"].root_url,
        model_name="llama2",
        endpoint_type="chat"  # or "completion", "streaming", "embedding"
    )

    # Use handler for generation
    response = handler("What is machine learning?",
        parameters={
            "temperature": 0.7,
            "num_predict": 100
        }
    )

    assert response["text"] == "Echo: What is machine learning?" and response["model"] == "llama2:latest"
    assert f["ollama"].stats()["by_path"] == {"/api/chat": 1}


def test_readme_gemini_backend(f, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", GOOGLE_KEY)
    monkeypatch.setenv("GEMINI_BASE_URL", f["gemini"].base_url)
    write_image("image.jpg")
    from ipfs_accelerate_py.api_backends import gemini

    # Initialize backend
    gemini_backend = gemini()

    # Get endpoint handler for text/chat
    endpoint_url, api_key, handler, queue, batch_size = gemini_backend.init(
        api_key="AIzaSyTESTreadme-google-api-key-7777",
        model_name="gemini-pro",
        endpoint_type="chat"  # or "completion", "vision", "embedding"
    )

    # For text/chat
    response = handler("What is quantum computing?",
        parameters={
            "temperature": 0.7,
            "top_p": 0.9,
            "max_output_tokens": 1024
        }
    )

    # For vision tasks
    from PIL import Image
    image = Image.open("image.jpg")
    vision_response = handler("Describe this image", image_data=image)

    assert response["text"] and response["model"].startswith("gemini-pro")
    assert vision_response["text"]
    assert endpoint_url == f["gemini"].base_url and api_key == "AIzaSyTESTreadme-google-api-key-7777"
    assert f["gemini"].key_stats("AIzaSyTESTreadme-google-api-key-7777")["ok"] == 2
    assert f["gemini"].key_stats(GOOGLE_KEY)["requests"] == 0  # the handler is pinned to init's key


def test_readme_claude_backend(f, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f["claude"].base_url)
    from ipfs_accelerate_py.api_backends import claude

    # Initialize backend
    claude_backend = claude()

    # Get endpoint handler
    endpoint_url, api_key, handler, queue, batch_size = claude_backend.init(
        api_key="sk-ant-test-readme-anthropic-0808",
        model_name="claude-3-opus",
        endpoint_type="chat"  # or "completion"
    )

    # Using system prompts
    messages = [
        {"role": "system", "content": "You are a helpful science teacher."},
        {"role": "user", "content": "Explain black holes"}
    ]

    response = handler(messages,
        parameters={
            "temperature": 0.7,
            "max_tokens": 2000,
            "top_p": 0.9
        }
    )

    assert response["text"] and response["model"] == "claude-3-opus"
    assert f["claude"].key_stats("sk-ant-test-readme-anthropic-0808")["ok"] == 1


# ---------------------------------------------------------------------------
# 004: the LLVM usage guide (TypeScript there; the Python names here)
# ---------------------------------------------------------------------------

def test_llvm_guide_basic_usage(f, capsys):
    from ipfs_accelerate_py.api_backends import llvm

    # Initialize the LLVM backend
    llvm_backend = llvm(resources={}, metadata={"llvm_base_url": f["llvm"].base_url})

    # Set API key (if not provided via environment variables)
    llvm_backend.set_api_key(LLVM_KEY)

    # List available models
    models = llvm_backend.list_models()
    print("Available models:", models["models"])

    # Run inference
    result = llvm_backend.run_inference(
        "llvm-text-model",
        "What is the capital of France?",
        {"max_tokens": 100}
    )

    print("Inference result:", result["outputs"])

    assert "llvm-model-1" in models["models"] and "llvm-text-model" in models["models"]
    assert result["outputs"] and result["model_id"] == "llvm-text-model"
    assert f["llvm"].key_stats(LLVM_KEY)["ok"] == 2
    assert capsys.readouterr().out.startswith("Available models: [")


def test_llvm_guide_full_example(f, capsys):
    from ipfs_accelerate_py.api_backends import llvm

    # Initialize the backend
    llvm_backend = llvm(resources={}, metadata={"llvm_base_url": f["llvm"].base_url})
    llvm_backend.max_concurrent_requests = 5
    llvm_backend.max_retries = 3

    # Set API key
    llvm_backend.set_api_key(LLVM_KEY)

    # Test connection
    connected = llvm_backend.test_endpoint()
    print("Connected:", connected)

    # List models
    models = llvm_backend.list_models()
    print("Available models:", models["models"])

    # Get model info
    model_info = llvm_backend.get_model_info("llvm-model-1")
    print("Model status:", model_info["status"])

    # Run inference
    inference_result = llvm_backend.run_inference(
        "llvm-model-1",
        "Translate to French: Hello, how are you?",
        {"max_tokens": 100}
    )
    print("Translation:", inference_result["outputs"])

    # Run inference with structured input
    structured_result = llvm_backend.run_inference(
        "llvm-model-1",
        {"text": "What is the capital of France?", "options": {"format": "json", "include_references": True}},
        {"max_tokens": 150}
    )

    # Chat interface
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is machine learning?"}
    ]

    chat_response = llvm_backend.chat("llvm-model-1", messages, {
        "max_tokens": 200
    })

    print("Chat response:", chat_response["text"])

    assert connected is True
    assert model_info == {"model_id": "llvm-model-1", "status": "loaded", "details": model_info["details"]}
    assert inference_result["outputs"] and structured_result["outputs"]
    assert chat_response["text"]
    assert llvm_backend.get_model_info("llvm-loading-model")["status"] == "loading"
    assert llvm_backend.get_stats()["endpoints_count"] == 1  # set_api_key replaced the keyless endpoint
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Connected: True" and out[2] == "Model status: loaded"
