"""Hub seam: token check before training, and one atomic commit with retries (the card: test_model_card.py).

Two layers: `create_autospec(HfApi)` pins what we ask of huggingface_hub, and a local HTTP stub of the Hub API
checks that the real client (its routes, payloads and token handling) behaves as we assume. Nothing leaves
127.0.0.1: every test points huggingface_hub at an unroutable or local endpoint and at an empty token cache.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest.mock import create_autospec

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, close_session, constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError
from huggingface_hub.hf_api import CommitInfo

from kspon_whisper.hub import (
    HubAccessError,
    HubPushError,
    check_hub_access,
    files_to_push,
    push_output_dir,
)

FAKE_TOKEN = "hf_test_secret_DO_NOT_LEAK_7f3a9c"
REPO_ID = "me/whisper-small-kspon"
OID = "0123456789abcdef0123456789abcdef01234567"

REPO_FILES = {
    "model.safetensors": b"\x00weights" * 64,
    "config.json": b'{"model_type": "whisper"}',
    "generation_config.json": b'{"language": "ko"}',
    "preprocessor_config.json": b"{}",
    "tokenizer.json": b"{}",
    "tokenizer_config.json": b"{}",
    "vocab.json": b"{}",
    "merges.txt": b"#version: 0.2\n",
    "normalizer.json": b"{}",
    "added_tokens.json": b"{}",
    "special_tokens_map.json": b"{}",
    "README.md": b"---\nlanguage: ko\n---\n# card\n",
    "eval_metrics.json": b'{"test": {"cer": 0.08}}',
    "predictions/test.jsonl": '{"id": "KsponSpeech_E00001", "pred": "안녕하세요"}\n'.encode(),
    "train_log.jsonl": b'{"step": 1, "loss": 2.0}\n',
    "logs/kspon-whisper/events.out.tfevents.1.host": b"tb",  # the trainer's tracker logs, linked from the card
    "ct2-int8/model.bin": b"\x00ct2" * 64,  # a faster-whisper export
    "ct2-int8/tokenizer.json": b"{}",
}
EXCLUDED_FILES = {
    "checkpoints/checkpoint_0/model.safetensors": b"old weights",
    "checkpoints/checkpoint_0/optimizer.bin": b"adam",
    "tmp_save/model.safetensors": b"partial",
    ".cache/huggingface/x": b"cache",
    "model.safetensors.tmp": b"partial",
    "optimizer.pt": b"adam",
    ".env": b"HF_TOKEN=hf_should_never_be_pushed",
}


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


@pytest.fixture(autouse=True)
def isolated_hub(monkeypatch, tmp_path_factory) -> None:
    # constants are read when huggingface_hub is imported, so the env vars alone would not redirect anything.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: a stray request fails fast
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    hf_home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))  # never read the real login cache
    # With telemetry on, building headers GETs {ENDPOINT}/api/agent-harnesses and caches it under HF_HOME.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(hf_home / ".agent_harnesses.json"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    _write_tree(tmp_path / "run", {**REPO_FILES, **EXCLUDED_FILES})
    return tmp_path / "run"


def _http_error(status: int) -> HfHubHTTPError:
    request = httpx2.Request("POST", f"http://127.0.0.1:9/api/models/{REPO_ID}/commit/main")
    return HfHubHTTPError(f"{status} error", response=httpx2.Response(status, request=request))


def _commit_info() -> CommitInfo:
    url = f"http://127.0.0.1:9/{REPO_ID}/commit/{OID}"
    return CommitInfo(commit_url=url, commit_message="m", commit_description="", oid=OID)


def _mock_api() -> HfApi:
    api = create_autospec(HfApi, instance=True)
    api.create_commit.return_value = _commit_info()
    api.whoami.return_value = {"type": "user", "name": "me", "orgs": [{"name": "kspon-lab"}]}
    return api


def _repush_command(output_dir: Path) -> str:
    return f"python train_accelerate.py --push_only --output_dir {output_dir} --hub_model_id {REPO_ID}"


# --- push, against a mocked HfApi ---------------------------------------------------------------------------------


def test_files_to_push_keeps_model_files_and_drops_training_state(output_dir):
    assert set(files_to_push(output_dir)) == set(REPO_FILES)


def test_files_to_push_skips_oversized_non_weight_files(output_dir):
    with open(output_dir / "huge.jsonl", "wb") as f:
        f.truncate(60 * 1024**2)  # sparse: no real disk use
    assert "huge.jsonl" not in files_to_push(output_dir)


def test_push_makes_one_commit_with_every_repo_file(output_dir):
    api = _mock_api()
    url = push_output_dir(output_dir, REPO_ID, private=True, api=api, sleep=pytest.fail)

    assert url == _commit_info().commit_url
    api.create_repo.assert_called_once_with(REPO_ID, repo_type="model", private=True, exist_ok=True)
    api.create_commit.assert_called_once()
    (repo_id, operations), kwargs = api.create_commit.call_args
    assert repo_id == REPO_ID
    assert kwargs["repo_type"] == "model"
    assert kwargs["commit_message"]
    assert all(isinstance(op, CommitOperationAdd) for op in operations)
    assert {op.path_in_repo for op in operations} == set(REPO_FILES)
    assert all(Path(op.path_or_fileobj) == output_dir / op.path_in_repo for op in operations)


def test_push_retries_transient_errors_with_backoff(output_dir):
    api = _mock_api()
    api.create_repo.side_effect = [httpx2.ConnectError("connection refused"), None, None, None, None]
    api.create_commit.side_effect = [_http_error(503), _http_error(429), httpx2.ReadTimeout("slow"), _commit_info()]
    sleeps: list[float] = []

    push_output_dir(output_dir, REPO_ID, api=api, sleep=sleeps.append, base_delay=1.0)

    assert api.create_repo.call_count == 5  # create_repo(exist_ok=True) is repeated with every attempt
    assert api.create_commit.call_count == 4
    assert sleeps == [1.0, 2.0, 4.0, 8.0]  # one backoff for the whole push: create_repo's failure, the commit's three
    first_ops, last_ops = api.create_commit.call_args_list[0].args[1], api.create_commit.call_args_list[-1].args[1]
    assert not {id(op) for op in first_ops} & {id(op) for op in last_ops}  # fresh operations on every attempt


@pytest.mark.parametrize("status", [401, 403, 404])
def test_push_does_not_retry_auth_or_missing_repo(output_dir, status):
    api = _mock_api()
    api.create_commit.side_effect = _http_error(status)

    with pytest.raises(HubPushError) as raised:
        push_output_dir(output_dir, REPO_ID, api=api, sleep=pytest.fail)

    assert api.create_commit.call_count == 1
    message = str(raised.value)
    assert f"HTTP {status}" in message
    assert _repush_command(output_dir) in message
    if status != 404:
        assert f"refused this token write access to {REPO_ID}" in message and "needs a write token" in message
        assert "hf auth login" in message and "HF_TOKEN" in message


def test_push_final_failure_keeps_the_model_and_gives_the_repush_command(output_dir):
    api = _mock_api()
    api.create_commit.side_effect = _http_error(500)
    sleeps: list[float] = []

    with pytest.raises(HubPushError) as raised:
        push_output_dir(output_dir, REPO_ID, api=api, max_attempts=3, sleep=sleeps.append, base_delay=1.0)

    assert api.create_commit.call_count == 3
    assert sleeps == [1.0, 2.0]
    message = str(raised.value)
    assert "after 3 attempt(s)" in message
    assert f"intact in {output_dir}" in message
    assert _repush_command(output_dir) in message
    for name, content in {**REPO_FILES, **EXCLUDED_FILES}.items():
        assert (output_dir / name).read_bytes() == content


def test_push_failure_names_an_absolute_output_dir(output_dir, monkeypatch):
    monkeypatch.chdir(output_dir.parent)
    api = _mock_api()
    api.create_repo.side_effect = _http_error(403)
    with pytest.raises(HubPushError) as raised:
        push_output_dir(output_dir.name, REPO_ID, api=api, sleep=pytest.fail)
    assert _repush_command(output_dir) in str(raised.value)  # copy-pastable from any directory
    assert f"write access to {REPO_ID} (HTTP 403)" in str(raised.value)  # create_repo's refusal reads as the commit's
    api.create_commit.assert_not_called()


def test_push_refuses_an_output_dir_without_weights(tmp_path):
    _write_tree(tmp_path, {"config.json": b"{}", "checkpoints/checkpoint_0/model.safetensors": b"w"})
    api = _mock_api()
    with pytest.raises(FileNotFoundError, match="No model weights"):
        push_output_dir(tmp_path, REPO_ID, api=api)
    api.create_repo.assert_not_called()


# --- start-up check, against a mocked HfApi -----------------------------------------------------------------------


@pytest.mark.parametrize("repo_id", [REPO_ID, "kspon-lab/whisper-small-kspon"])
def test_check_hub_access_accepts_own_and_org_namespaces(repo_id):
    api = _mock_api()
    assert check_hub_access(repo_id, api=api) == "me"
    api.whoami.assert_called_once_with()


def test_check_hub_access_lists_namespaces_when_repo_is_elsewhere():
    with pytest.raises(HubAccessError, match="someone-else") as raised:
        check_hub_access("someone-else/model", api=_mock_api())
    assert "me, kspon-lab" in str(raised.value)


def test_check_hub_access_wants_a_namespace():
    with pytest.raises(HubAccessError, match="--hub_model_id me/model"):
        check_hub_access("model", api=_mock_api())


def test_check_hub_access_without_token_says_how_to_log_in():
    api = _mock_api()
    api.whoami.side_effect = LocalTokenNotFoundError("no token")
    with pytest.raises(HubAccessError, match="none was found") as raised:
        check_hub_access(REPO_ID, api=api)
    assert "hf auth login" in str(raised.value) and "export HF_TOKEN=" in str(raised.value)


def test_check_hub_access_with_rejected_token_says_how_to_fix_it():
    api = _mock_api()
    api.whoami.side_effect = _http_error(401)
    with pytest.raises(HubAccessError, match="rejected") as raised:
        check_hub_access(REPO_ID, api=api)
    assert "hf auth login" in str(raised.value)


@pytest.mark.parametrize("setting", ["HF_HUB_OFFLINE", "HF_HUB_DISABLE_IMPLICIT_TOKEN"])
def test_check_hub_access_refuses_settings_that_break_the_push(monkeypatch, setting):
    monkeypatch.setattr(constants, setting, True)
    api = _mock_api()
    with pytest.raises(HubAccessError, match=setting):
        check_hub_access(REPO_ID, api=api)
    api.whoami.assert_not_called()


# --- the real client against a local stub of the Hub API ----------------------------------------------------------


class HubStub:
    """Just enough of the Hub API for whoami, create_repo and a one-commit upload of small ("regular") files."""

    REFUSED = 403, {"error": "You don't have the rights to create a model under the namespace me"}

    def __init__(self) -> None:
        self.commit_failures = 0  # answer this many commit POSTs with 500 first; -1 for all of them
        self.whoami_status = 200
        self.read_only = False  # a read token: whoami answers, creating a repo and committing are refused (403)
        self.repo_exists = False
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.commits: list[dict[str, bytes]] = []
        self.commit_posts = 0
        self.url = ""

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, object]:
        self.requests.append((method, path, headers))
        parts = path.split("?")[0].strip("/").split("/")
        if method == "GET" and parts == ["api", "whoami-v2"]:
            token = {"role": "read" if self.read_only else "write"}
            return self.whoami_status, {"type": "user", "name": "me", "orgs": [], "auth": {"accessToken": token}}
        if method == "GET" and parts[:2] == ["api", "models"] and len(parts) == 4 and self.repo_exists:
            return 200, {"id": f"{parts[2]}/{parts[3]}", "sha": OID, "private": False}
        if method == "POST" and parts == ["api", "repos", "create"]:
            if self.read_only:
                return self.REFUSED
            request = json.loads(body)
            return 200, {"url": f"{self.url}/{request['organization']}/{request['name']}"}
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return 200, {"errors": [], "warnings": []}
        if method == "POST" and parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if method == "POST" and parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "commit":
            return self._commit(f"{parts[2]}/{parts[3]}", body)
        return 404, {"error": f"stub has no route {method} {path}"}

    def _commit(self, repo_id: str, body: bytes) -> tuple[int, object]:
        self.commit_posts += 1
        if self.read_only:
            return self.REFUSED
        if self.commit_failures < 0 or self.commit_posts <= self.commit_failures:
            return 500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        assert lines[0]["key"] == "header"
        self.commits.append({line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines[1:]})
        return 200, {"success": True, "commitOid": OID, "commitUrl": f"{self.url}/{repo_id}/commit/{OID}"}


def _handler_for(stub: HubStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, payload = stub.handle(self.command, self.path, dict(self.headers), body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, format, *args) -> None:  # keep the server quiet on stderr
            pass

    return Handler


@pytest.fixture
def hub_stub(monkeypatch) -> Iterator[HubStub]:
    stub = HubStub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(stub))
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", stub.url)  # for any code that reads the env var itself
    monkeypatch.setattr(constants, "ENDPOINT", stub.url)  # what HfApi() uses: the env var was read at import
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    close_session()  # the shared httpx2 client reads proxy settings when it is created
    yield stub
    close_session()
    server.shutdown()
    server.server_close()


def _assert_token_never_leaked(caplog, capsys, output_dir: Path, *messages: str) -> None:
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in caplog.text
    assert all(FAKE_TOKEN not in record.getMessage() for record in caplog.records)
    assert FAKE_TOKEN not in captured.out + captured.err
    assert all(FAKE_TOKEN not in message for message in messages)
    for path in output_dir.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("commit_failures", [0, 2, -1], ids=["first-try", "500-twice", "500-always"])
def test_push_through_the_real_client(hub_stub, output_dir, caplog, capsys, commit_failures):
    caplog.set_level(logging.DEBUG)
    hub_stub.commit_failures = commit_failures
    sleeps: list[float] = []

    assert check_hub_access(REPO_ID) == "me"  # default HfApi(): follows constants.ENDPOINT
    api = HfApi(endpoint=hub_stub.url)
    push = lambda: push_output_dir(output_dir, REPO_ID, api=api, max_attempts=3, sleep=sleeps.append)  # noqa: E731
    if commit_failures < 0:
        with pytest.raises(HubPushError) as raised:
            push()
        message = str(raised.value)
        assert hub_stub.commit_posts == 3 and not hub_stub.commits
        assert _repush_command(output_dir) in message
        assert (output_dir / "model.safetensors").read_bytes() == REPO_FILES["model.safetensors"]
    else:
        message = push()
        assert message == f"{hub_stub.url}/{REPO_ID}/commit/{OID}"
        assert hub_stub.commit_posts == commit_failures + 1
        assert hub_stub.commits == [REPO_FILES]  # one commit, byte-identical files, no checkpoints

    assert len(sleeps) == hub_stub.commit_posts - 1
    routes = {(method, path.split("?")[0]) for method, path, _ in hub_stub.requests}
    assert routes == {
        ("GET", "/api/whoami-v2"),
        ("POST", "/api/repos/create"),
        ("POST", "/api/validate-yaml"),
        ("POST", f"/api/models/{REPO_ID}/preupload/main"),
        ("POST", f"/api/models/{REPO_ID}/commit/main"),
    }
    authorizations = {
        headers.get("Authorization") or headers.get("authorization") for _, _, headers in hub_stub.requests
    }
    assert authorizations == {f"Bearer {FAKE_TOKEN}"}
    _assert_token_never_leaked(caplog, capsys, output_dir, message)


def test_rejected_token_through_the_real_client(hub_stub, output_dir, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    hub_stub.whoami_status = 401
    with pytest.raises(HubAccessError, match="rejected") as raised:
        check_hub_access(REPO_ID)
    _assert_token_never_leaked(caplog, capsys, output_dir, str(raised.value), repr(raised.value.__cause__))


def test_missing_token_through_the_real_client(hub_stub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubAccessError, match="none was found"):
        check_hub_access(REPO_ID)
    assert not hub_stub.requests


@pytest.mark.parametrize("repo_exists", [False, True], ids=["new-repo", "existing-repo"])
def test_read_only_token_is_refused_by_the_hub_once(hub_stub, output_dir, caplog, capsys, repo_exists):
    hub_stub.read_only, hub_stub.repo_exists = True, repo_exists
    assert check_hub_access(REPO_ID) == "me"  # whether a token may write is the Hub's to say, at the push

    with pytest.raises(HubPushError) as raised:
        push_output_dir(output_dir, REPO_ID, api=HfApi(endpoint=hub_stub.url), sleep=pytest.fail)

    message = str(raised.value)
    assert f"refused this token write access to {REPO_ID} (HTTP 403)" in message and "hf auth login" in message
    assert _repush_command(output_dir) in message
    # create_repo(exist_ok=True) looks the repo up after a 403 and goes on to the commit when it exists
    assert hub_stub.commit_posts == repo_exists and not hub_stub.commits
    _assert_token_never_leaked(caplog, capsys, output_dir, message)


def test_unreachable_hub_is_retried_through_the_real_client(hub_stub, output_dir):
    sleeps: list[float] = []
    api = HfApi(endpoint="http://127.0.0.1:9")  # the discard port: nothing listens, the connection is refused
    with pytest.raises(HubPushError, match="after 3 attempt") as raised:
        push_output_dir(output_dir, REPO_ID, api=api, max_attempts=3, sleep=sleeps.append, base_delay=1.0)
    assert sleeps == [1.0, 2.0]  # the client's own connection error is one we retry
    assert "ConnectError" in str(raised.value)
