"""Publishing a finished run on the Hugging Face Hub: check the token before training, push once after it.

    check_hub_access(cfg.hub_model_id)         # at start-up, so a missing or bad token fails before hours of training
    ...                                        # train, save, evaluate, write the card (kspon_whisper.model_card)
    push_output_dir(cfg.output_dir, cfg.hub_model_id, private=cfg.hub_private)

`--push_only` runs the last call alone on an existing output_dir. The token is never an argument here, so it cannot
end up in a log line, an error or a file: huggingface_hub reads `HF_TOKEN`, or the `hf auth login` cache. Only public
huggingface_hub API is used, and whether the token may write is the Hub's to say: a read-only token passes the start-up
check, is refused at the push, and the refusal says which repo and which token to use.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

try:  # the HTTP client huggingface_hub raises from: httpx2 (exported as utils.httpx) from 2.0, httpx in 1.x
    from huggingface_hub.utils import httpx
except ImportError:
    import httpx

logger = logging.getLogger(__name__)

LOGIN_HELP = (
    "Log in with `hf auth login` using a token with write access, or `export HF_TOKEN=hf_...`; tokens are made at "
    "https://huggingface.co/settings/tokens"
)
REPUSH_COMMAND = "python train_accelerate.py --push_only --output_dir {output_dir} --hub_model_id {repo_id}"

# Worth another try: the Hub busy or down, or the connection lost on the way. Anything else will fail the same way.
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
RETRY_EXCEPTIONS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

# Training state and scratch files stay local; weights, the card and what it links to (metrics, predictions, logs)
# are pushed. A stray non-weight file this large is an artefact, not a log.
IGNORE_PATTERNS = ["checkpoints/*", ".*", "*/.*", "tmp*", "*.tmp", "*.lock", "optimizer*"]
MAX_AUX_FILE_BYTES = 50 * 1024**2


class HubAccessError(RuntimeError):
    """The token or the target repo is not usable; raised before training starts."""


class HubPushError(RuntimeError):
    """The push failed; the output_dir is untouched and can be re-pushed with `--push_only`."""


def check_hub_access(repo_id: str, api: HfApi | None = None) -> str:
    """Fail now, not after training, if the token is missing or rejected, or `repo_id` is not in one of its owner's
    namespaces; return the user name. huggingface_hub reads its offline and implicit-token settings once, at import."""
    for setting in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        if getattr(constants, setting):
            raise HubAccessError(f"--push_to_hub needs {setting} unset in the environment before the run starts.")
    try:
        validate_repo_id(repo_id)
        user = (api or HfApi()).whoami()
    except HFValidationError as err:
        raise HubAccessError(f"--hub_model_id {repo_id!r} is not a valid repo id: {err}") from err
    except LocalTokenNotFoundError as err:
        raise HubAccessError(f"--push_to_hub needs a Hugging Face token and none was found. {LOGIN_HELP}") from err
    except HfHubHTTPError as err:
        if (status := _status(err)) == 401:
            reason = "was rejected (401): it is invalid, expired or revoked (HF_TOKEN wins over the login cache). "
            raise HubAccessError(f"The Hugging Face token {reason}{LOGIN_HELP}") from err
        raise HubAccessError(f"Could not check the token (HTTP {status}); retry in a minute.") from err
    namespace, _, name = repo_id.rpartition("/")
    namespaces = [user["name"], *(org["name"] for org in user.get("orgs", []))]
    if not namespace:
        raise HubAccessError(f"--hub_model_id needs a namespace, e.g. --hub_model_id {user['name']}/{repo_id}")
    if namespace not in namespaces:
        raise HubAccessError(
            f"The token belongs to {user['name']!r}, who cannot create repos under {namespace!r}. Use one of "
            f"{', '.join(namespaces)} (e.g. --hub_model_id {user['name']}/{name}). {LOGIN_HELP}"
        )
    return user["name"]


def files_to_push(output_dir: str | Path) -> list[str]:
    """Paths, relative to `output_dir` and sorted, of the files that belong in the model repo."""
    root = Path(output_dir)
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    kept = list(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS))
    too_big = [p for p in kept if not _is_weight(p) and (root / p).stat().st_size > MAX_AUX_FILE_BYTES]
    if too_big:
        logger.warning("Not pushing %s: too large for a log or metrics file", ", ".join(too_big))
    return [p for p in kept if p not in too_big]


def _is_weight(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.startswith(("model", "pytorch_model")) and name.endswith((".safetensors", ".bin"))


def push_output_dir(
    output_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    api: HfApi | None = None,
    max_attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
    base_delay: float = 4.0,
) -> str:
    """Create `repo_id` if needed and upload `files_to_push(output_dir)` in ONE commit; return the commit URL.

    One `create_commit` is atomic: the repo shows all of the run or none of it (`upload_folder` may split a large
    upload into several commits). huggingface_hub retries its uploads but posts the commit once, so transient
    failures (RETRY_STATUSES, RETRY_EXCEPTIONS) are retried here with exponential backoff.
    """
    output_dir = Path(output_dir)
    paths = files_to_push(output_dir)
    if not output_dir.is_dir() or not any("/" not in path and _is_weight(path) for path in paths):
        raise FileNotFoundError(
            f"No model weights (model.safetensors or shards) at the top of {output_dir}; refusing to push to "
            f"{repo_id}. Pass the output_dir of a finished training run."
        )
    api = api or HfApi()
    logger.info("Pushing %d files from %s to %s (private=%s)", len(paths), output_dir, repo_id, private)
    for attempt in range(1, max_attempts + 1):
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            # Fresh operations on every attempt: create_commit mutates them and refuses to reuse committed ones.
            operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=output_dir / path) for path in paths]
            info = api.create_commit(
                repo_id, operations, commit_message="Upload Whisper fine-tuned on KsponSpeech", repo_type="model"
            )
            return str(info.commit_url)
        except (OSError, ValueError, httpx.HTTPError) as err:  # HfHubHTTPError is an OSError
            if not _is_transient(err) or attempt == max_attempts:
                raise HubPushError(_failure_message(err, attempt, output_dir, repo_id)) from err
            delay = base_delay * 2 ** (attempt - 1)
            logger.warning("Push to %s failed (%s); retrying in %.0f s", repo_id, _describe(err), delay)
            sleep(delay)
    raise AssertionError("unreachable")


def _is_transient(err: Exception) -> bool:
    return _status(err) in RETRY_STATUSES or isinstance(err, RETRY_EXCEPTIONS)


def _failure_message(err: Exception, attempts: int, output_dir: Path, repo_id: str) -> str:
    refused = f"the Hub refused this token write access to {repo_id} (HTTP {_status(err)}): it needs a write token. "
    causes = {
        401: refused + LOGIN_HELP,
        403: refused + LOGIN_HELP,
        404: f"{repo_id} was not found or is not visible to this token (HTTP 404); check --hub_model_id",
    }
    output_dir = output_dir.absolute()  # a command that works from any directory
    command = REPUSH_COMMAND.format(output_dir=shlex.quote(str(output_dir)), repo_id=shlex.quote(repo_id))
    return (
        f"Pushing to the Hub failed after {attempts} attempt(s): {causes.get(_status(err)) or _describe(err)}\n"
        f"The trained model is intact in {output_dir}; nothing there was changed. Once the cause is fixed, push it "
        f"again with:\n    {command}"
    )


def _status(err: Exception) -> int | None:
    return err.response.status_code if isinstance(err, HfHubHTTPError) else None


def _describe(err: Exception) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{f'HTTP {_status(err)}' if _status(err) else type(err).__name__}: {text}"
