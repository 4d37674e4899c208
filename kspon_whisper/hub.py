"""Publishing a finished run on the Hugging Face Hub: check the token before training, write the card, push once.

How `train_accelerate.py` uses it (rank 0 only):

    check_hub_access(args.hub_model_id)              # at start-up, so a bad token fails before hours of training
    ...                                              # train, save model + processor, evaluate
    write_model_card(args.output_dir, hub_model_id=args.hub_model_id, base_model=args.model_name_or_path,
                     metrics=metrics, hyperparameters=vars(args), scoring_normalization=SCORING_NORMALIZATION)
    push_output_dir(args.output_dir, args.hub_model_id, private=args.hub_private)

and `--push_only` runs the last call alone on an existing output_dir.

The token is never an argument here, so it can never end up in a log line, an error or a file: huggingface_hub
reads `HF_TOKEN`, or else the cache written by `hf auth login`, on every request.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import re
import shlex
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx2
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, constants, is_offline_mode
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

from kspon_dataset.kspon_dataset import _CITATION as KSPON_CITATION

logger = logging.getLogger("kspon_whisper.hub")

T = TypeVar("T")

LOGIN_HELP = (
    "Log in with `hf auth login` (older huggingface_hub: `huggingface-cli login`) using a token with write "
    "access, or `export HF_TOKEN=hf_...`; tokens are made at https://huggingface.co/settings/tokens"
)
REPUSH_COMMAND = "python train_accelerate.py --push_only --output_dir {output_dir} --hub_model_id {repo_id}"

# Metric keys of `metrics[split]`, as `kspon_whisper.metrics.score` returns them, with their display names. Values
# come in as fractions (0.0785) and the card reports percentages, the convention of Whisper fine-tune cards.
# `score`'s `num_*` counts may ride along; they are not metrics and stay out of the model-index.
METRICS = {"cer": "CER", "wer": "WER", "swer": "sWER", "cer_nospace": "Space-free CER"}
COUNT_PREFIX = "num_"
DATASET_TYPE = "kspon_speech"  # the corpus is not on the Hub (AI Hub only); this names the builder in kspon_dataset/
DATASET_CONFIGS = ("spelling", "phonetic")
SPLIT_SCHEMES = ("random", "random_utterance", "official")  # kspon_dataset's split_scheme
OFFICIAL_EVAL_SPLITS = {"eval_clean": 3000, "eval_other": 3000}  # the official evaluation sets and their sizes

# Published results on eval_clean / eval_other, in percent: (system, {metric: (clean, other)}, how it scores, source).
PUBLISHED_RESULTS = (
    (
        "SpeechBrain Conformer + Transformer LM",
        {"cer": (7.33, 7.99), "wer": (20.47, 25.18)},
        "spelling side; `+ * / . ? ! ,` and tags removed; case and `%` kept",
        "[speechbrain/recipes/KsponSpeech](https://github.com/speechbrain/speechbrain/tree/develop/recipes/KsponSpeech)",
    ),
    (
        "ESPnet1 Conformer-large + LM",
        {"cer": (7.4, 8.5), "wer": (20.8, 25.5), "swer": (13.2, 15.4)},
        "spelling side; fillers and repeats kept; punctuation removed; Latin upper-cased; `u/` as `[unk]`",
        "[espnet/egs/ksponspeech/asr1/RESULTS.md](https://github.com/espnet/espnet/blob/master/egs/ksponspeech/asr1/RESULTS.md)",
    ),
    (
        "icefall Zipformer",
        {"cer": (10.35, 11.35)},
        "spelling side via Lhotse; `. , ? !` kept",
        "[icefall/egs/ksponspeech](https://github.com/k2-fsa/icefall/tree/master/egs/ksponspeech)",
    ),
    (
        "Whisper large-v2, zero-shot",
        {"cer": (10.83, 10.83)},
        "the paper's own",
        "Oh, Kim & Park (2023), Table 4",
    ),
)

# What never goes to the model repo: Accelerate training state, temp folders and tracker runs. Weights and the
# small files the card links to (metrics, predictions, logs) do.
EXCLUDED_DIRS = frozenset({"checkpoints", "runs", "wandb", "mlruns", "tensorboard", "tmp", "temp", "__pycache__"})
EXCLUDED_SUFFIXES = (".tmp", ".partial", ".incomplete", ".lock", "~")
EXCLUDED_PREFIXES = ("optimizer", "scheduler", "scaler", "sampler", "random_states", "custom_checkpoint")
WEIGHT_PREFIXES = ("model", "pytorch_model")  # model.safetensors, model-00001-of-00002.safetensors, ...
WEIGHT_SUFFIXES = (".safetensors", ".bin")
MAX_AUX_FILE_BYTES = 50 * 1024**2  # a non-weight file bigger than this is a stray artefact, not a log or metrics file
_TRANSIENT_STATUS = frozenset({408, 429})  # plus every 5xx
_TRANSIENT_ERRORS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError, TimeoutError)


class HubAccessError(RuntimeError):
    """The token or the target repo is not usable; raised before training starts."""


class HubPushError(RuntimeError):
    """The push failed; the output_dir is untouched and can be re-pushed with `--push_only`."""


# --- start-up check -----------------------------------------------------------------------------------------------


def check_hub_access(repo_id: str, api: HfApi | None = None) -> str:
    """Fail now, not after training, if the token is missing or invalid or cannot write to `repo_id`.

    Returns the user name the token belongs to.
    """
    _require_online()
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubAccessError(f"--hub_model_id {repo_id!r} is not a valid repo id: {err}") from err
    user = _whoami(api if api is not None else HfApi())
    _check_namespace(repo_id, user)
    if user.get("auth", {}).get("accessToken", {}).get("role") == "read":
        raise HubAccessError(f"The token of {user['name']!r} is read-only, so the push would fail. {LOGIN_HELP}")
    logger.info("Hub access checked: logged in as %s, will push to %s", user["name"], repo_id)
    return user["name"]


def _check_namespace(repo_id: str, user: dict) -> None:
    username = user["name"]
    namespace, _, name = repo_id.rpartition("/")
    if not namespace:
        raise HubAccessError(
            f"--hub_model_id {repo_id!r} has no namespace; use the full id, e.g. --hub_model_id {username}/{repo_id}"
        )
    namespaces = [username, *(org["name"] for org in user.get("orgs", []))]
    if namespace not in namespaces:
        raise HubAccessError(
            f"The token belongs to {username!r}, who cannot create repos under {namespace!r}. Use one of these "
            f"namespaces: {', '.join(namespaces)} (e.g. --hub_model_id {username}/{name}), or log in as a member "
            f"of {namespace!r}. {LOGIN_HELP}"
        )


def _require_online() -> None:
    # Both are read once, when huggingface_hub is imported, so they must be unset before the process starts.
    if is_offline_mode():
        raise HubAccessError(
            "--push_to_hub needs the Hub, but HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set. Unset it in the "
            "environment before starting, or train without --push_to_hub and push later with --push_only."
        )
    if constants.HF_HUB_DISABLE_IMPLICIT_TOKEN:  # whoami would still pass, but the push would go out without it
        raise HubAccessError(
            "HF_HUB_DISABLE_IMPLICIT_TOKEN is set, so huggingface_hub would not send the token with the push. "
            "Unset it in the environment before starting."
        )


def _whoami(api: HfApi) -> dict:
    try:
        return api.whoami()
    except LocalTokenNotFoundError as err:
        raise HubAccessError(f"--push_to_hub needs a Hugging Face token and none was found. {LOGIN_HELP}") from err
    except HfHubHTTPError as err:
        status = _status_of(err)
        if status == 401:
            raise HubAccessError(
                f"The Hugging Face token was rejected (401 Unauthorized); it is invalid, expired or revoked. "
                f"Note that HF_TOKEN, when set, takes precedence over the login cache. {LOGIN_HELP}"
            ) from err
        raise HubAccessError(
            f"Could not check the token with the Hub (HTTP {status}: {_first_line(err)}). This is usually "
            "transient (429 means the whoami rate limit): retry in a minute, or train without --push_to_hub."
        ) from err
    except (*_TRANSIENT_ERRORS, ConnectionError) as err:
        raise HubAccessError(
            f"Could not reach the Hub to check the token ({type(err).__name__}: {_first_line(err)}). Check the "
            "network, proxy and HF_ENDPOINT, or train without --push_to_hub and push later with --push_only."
        ) from err


# --- model card ---------------------------------------------------------------------------------------------------

_CARD_TEMPLATE = string.Template(
    """
# $title

This model is [$base_model](https://huggingface.co/$base_model) fine-tuned for Korean speech recognition on
KsponSpeech, about 969 hours of spontaneous open-domain conversation recorded from about 2,000 native speakers
and transcribed by hand (Bang et al., 2020). It writes the **$dataset_config** transcript of KsponSpeech.

## Results

Error rates in **percent** (lower is better) on the KsponSpeech splits below. $splits_note

$results_table

- **CER**: character edits (substitutions + deletions + insertions) over reference characters, spaces included.
- **WER**: the same over space-separated words. Korean spacing is inconsistent even in human transcripts, so WER
  is pessimistic.
- **sWER**: space-normalised WER, the KsponSpeech paper's word metric: wherever the hypothesis matches the
  reference once spaces are ignored, it takes the reference's spacing (ESPnet's `get_space_normalized_hyps.py`),
  then WER is scored.
- **Space-free CER** (`cer_nospace`): CER after deleting every space from reference and hypothesis, so spacing
  is not scored at all.

$comparison

Scoring normalisation, applied to references and hypotheses alike before scoring: $scoring_normalization

## How to use

```python
from transformers import pipeline

asr = pipeline("automatic-speech-recognition", model="$model_ref")
print(asr("speech.wav", generate_kwargs={"language": "ko", "task": "transcribe"})["text"])
```

KsponSpeech audio is headerless 16 kHz, 16-bit little-endian mono PCM; read a `.pcm` file with
`numpy.fromfile(path, dtype="<i2").astype("float32") / 32768` and pass `{"raw": audio, "sampling_rate": 16000}`.

## Training data and transcript normalisation

KsponSpeech gives many words a dual transcription, `(spelling)/(pronunciation)`, for example `(3월)/(삼 월)`.
$transcript_choice Annotation marks are stripped and the words they mark kept: the filler mark `/`, the
repetition mark `+`, the hard-to-hear mark `*`, and the event tags `b/` (breath), `l/` (laughter), `o/` (another
speaker), `n/` (noise) and `u/` (unintelligible). Punctuation `. , ? !`, Latin letters and digits stay as written;
text is Unicode NFC with runs of spaces collapsed.

**Licence.** The weights are released under Apache-2.0, as Whisper's are. KsponSpeech itself is distributed only
by [AI Hub](https://aihub.or.kr/aihubdata/data/view.do?dataSetSn=123) under AI Hub's terms of use; it is not
redistributed here, and anyone reproducing this training must obtain it from AI Hub and follow those terms.

## Training hyperparameters

$hyperparameters_table

## Framework versions

$versions_table

## Citation

```bibtex
$kspon_citation

@misc{radford2022whisper,
  title         = {Robust Speech Recognition via Large-Scale Weak Supervision},
  author        = {Radford, Alec and Kim, Jong Wook and Xu, Tao and Brockman, Greg and McLeavey, Christine and
                   Sutskever, Ilya},
  year          = {2022},
  eprint        = {2212.04356},
  archivePrefix = {arXiv},
  primaryClass  = {eess.AS}
}
```
"""
)

_TRANSCRIPT_CHOICE = {
    "spelling": "This model was trained on the spelling (orthographic) side, `3월`, so it writes digits and "
    "standard spelling.",
    "phonetic": "This model was trained on the pronunciation (phonetic) side, `삼 월`, so it writes numbers and "
    "loanwords as they are spoken, in Hangul.",
}
_SECRET_KEY = re.compile(r"(^|_)token$|secret|password|api_key|credential", re.IGNORECASE)  # not max_new_tokens
_FRAMEWORKS = ("transformers", "torch", "accelerate", "datasets", "huggingface_hub")


def write_model_card(
    output_dir: str | os.PathLike[str],
    *,
    hub_model_id: str | None,
    base_model: str,
    metrics: dict[str, dict[str, float]],
    hyperparameters: dict[str, object],
    scoring_normalization: str,
    dataset_config: str = "spelling",
    split_scheme: str = "random",
) -> Path:
    """Write `output_dir/README.md`: Hub metadata (model-index with one result per split and metric) and the card.

    `metrics` maps a split (`test`, `eval_clean`, `eval_other`, ...) to `kspon_whisper.metrics.score` output:
    `cer`, `wer`, `swer`, `cer_nospace` as fractions (0.0785), shown as percentages rounded to 2 decimals.
    `split_scheme` is the one the run's validation and test splits came from (eval_clean / eval_other are the official
    evaluation sets in every scheme); with evaluation results on those, the card sets the model beside published
    systems.
    """
    if dataset_config not in DATASET_CONFIGS:
        raise ValueError(f"dataset_config is {dataset_config!r}; expected one of {', '.join(DATASET_CONFIGS)}")
    if split_scheme not in SPLIT_SCHEMES:
        raise ValueError(f"split_scheme is {split_scheme!r}; expected one of {', '.join(SPLIT_SCHEMES)}")
    _check_metrics(metrics)
    output_dir = Path(output_dir)
    model_name = hub_model_id.split("/")[-1] if hub_model_id else output_dir.resolve().name
    card_data = ModelCardData(
        language="ko",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="automatic-speech-recognition",
        base_model=base_model,
        tags=["automatic-speech-recognition", "whisper", "korean", "kspon-speech"],
        metrics=sorted({key for values in metrics.values() for key in values if key in METRICS}) or None,
        model_name=model_name,
        eval_results=_eval_results(metrics, dataset_config) or None,
    )
    body = _CARD_TEMPLATE.substitute(
        title=model_name,
        base_model=base_model,
        dataset_config=dataset_config,
        results_table=_results_table(metrics),
        splits_note=_splits_note(metrics, split_scheme),
        comparison=_comparison(metrics, model_name, dataset_config),
        scoring_normalization=scoring_normalization,
        model_ref=hub_model_id or f"./{model_name}",
        transcript_choice=_TRANSCRIPT_CHOICE[dataset_config],
        hyperparameters_table=_markdown_table(("Hyperparameter", "Value"), _public_hyperparameters(hyperparameters)),
        versions_table=_markdown_table(("Library", "Version"), [(name, _version(name)) for name in _FRAMEWORKS]),
        kspon_citation=KSPON_CITATION.strip(),
    )
    path = output_dir / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}").save(path)
    logger.info("Wrote model card %s", path)
    return path


def _check_metrics(metrics: dict[str, dict[str, float]]) -> None:
    for split, values in metrics.items():
        for key, value in values.items():
            if key.startswith(COUNT_PREFIX):
                continue
            if key not in METRICS:
                raise ValueError(
                    f"metrics[{split!r}] has unknown metric {key!r}; expected {', '.join(METRICS)} "
                    f"(or {COUNT_PREFIX}* counts)"
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"metrics[{split!r}][{key!r}] is {value!r}; expected a finite, non-negative fraction such as "
                    "0.0785. A NaN or inf usually means the split was empty or evaluation diverged."
                )
            if value > 1.5:  # CER can pass 1 with insertions, but rarely this far: likely a percentage passed in
                logger.warning(
                    "metrics[%r][%r] = %s looks like a percentage; values must be fractions", split, key, value
                )


def _public_hyperparameters(hyperparameters: dict[str, object]) -> list[tuple[str, object]]:
    # `vars(args)` goes straight in here; a credential-like field must not reach a public README.
    secret = [key for key in hyperparameters if _SECRET_KEY.search(key)]
    if secret:
        logger.warning("Leaving %s out of the model card: they look like credentials", ", ".join(sorted(secret)))
    return sorted((key, value) for key, value in hyperparameters.items() if key not in secret)


def _percent(fraction: float) -> float:
    return round(100 * float(fraction), 2)


def _eval_results(metrics: dict[str, dict[str, float]], dataset_config: str) -> list[EvalResult]:
    return [
        EvalResult(
            task_type="automatic-speech-recognition",
            task_name="Automatic Speech Recognition",
            dataset_type=DATASET_TYPE,
            dataset_name="KsponSpeech",
            dataset_config=dataset_config,
            dataset_split=split,
            metric_type=key,
            metric_name=METRICS[key],
            metric_value=_percent(value),
        )
        for split, values in metrics.items()
        for key, value in values.items()
        if key in METRICS
    ]


def _results_table(metrics: dict[str, dict[str, float]]) -> str:
    if not metrics:
        return "No evaluation results were recorded for this run."
    header = ("Split", *(f"{name} (%)" for name in METRICS.values()))
    rows = [
        (split, *(f"{_percent(values[key]):.2f}" if key in values else "–" for key in METRICS))
        for split, values in metrics.items()
    ]
    return _markdown_table(header, rows)


def _splits_note(metrics: dict[str, dict[str, float]], split_scheme: str) -> str:
    notes = []
    official = [split for split in OFFICIAL_EVAL_SPLITS if split in metrics]
    if official:
        notes.append(f"{' and '.join(f'`{s}`' for s in official)}: the official evaluation sets of KsponSpeech.")
    held_out = [split for split in ("validation", "test") if split in metrics]
    if held_out and split_scheme == "official":
        if "validation" in held_out:
            notes.append("`validation`: the official dev set (`dev.trn`).")
    elif held_out:
        how = "by recording folder" if split_scheme == "random" else "by utterance (conversations leak across splits)"
        notes.append(
            f"{' and '.join(f'`{s}`' for s in held_out)}: a random 8:1:1 split of the training archives {how}, not "
            "an official set. **These held-out numbers are not comparable with the literature**; compare "
            "`eval_clean` / `eval_other`."
        )
    return " ".join(notes)


def _comparison(metrics: dict[str, dict[str, float]], model_name: str, dataset_config: str) -> str:
    """This model's row beside the published eval_clean / eval_other results, when the run scored those sets."""
    if not any(split in metrics for split in OFFICIAL_EVAL_SPLITS):
        return ""
    if dataset_config != "spelling":
        return (
            "Published KsponSpeech results are scored on the spelling side of the transcripts (`3월`, `SRT`); "
            "this model writes the pronunciation side (`삼 월`, `에스알티`), so its error rates are **not "
            "comparable** with them."
        )

    def pair(values: dict, key: str, fmt: str) -> str:
        if key not in values:
            return "–"
        return " / ".join("–" if v is None else format(v, fmt) for v in values[key])

    ours = {
        key: tuple(_percent(metrics[s][key]) if key in metrics.get(s, {}) else None for s in OFFICIAL_EVAL_SPLITS)
        for key in ("cer", "wer", "swer")
    }
    rows = [(f"**{model_name} (this model)**", *(pair(ours, k, ".2f") for k in ours), "spelling side; see below", "")]
    rows += [
        (name, *(pair(values, k, "g") for k in ours), how, source) for name, values, how, source in PUBLISHED_RESULTS
    ]
    header = ("System", "CER", "WER", "sWER", "How it scores", "Source")
    text = (
        "### Beside published results\n\nOn `eval_clean` / `eval_other`, in percent. Every system below is scored "
        "on the spelling side of the transcripts, but each with its own text normalisation, so differences of a few "
        "tenths are within scoring conventions. This card's normalisation follows ESPnet's.\n\n"
        + _markdown_table(header, rows)
    )
    partial = [
        f"`{split}` ({metrics[split]['num_scored']:,} utterances scored; the official set has {size:,})"
        for split, size in OFFICIAL_EVAL_SPLITS.items()
        if split in metrics and metrics[split].get("num_scored", size) != size
    ]
    if partial:
        text += (
            f"\n\n**Not the full official sets:** {', '.join(partial)}. This row is not comparable with the "
            "published ones."
        )
    return text


def _markdown_table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --- push ---------------------------------------------------------------------------------------------------------


def files_to_push(output_dir: str | os.PathLike[str]) -> list[str]:
    """Paths, relative to `output_dir` and sorted, of the files that belong in the model repo."""
    root = Path(output_dir)
    selected = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _is_excluded_dir(d))
        for name in sorted(files):
            path = Path(folder, name)
            if _is_excluded_file(name) or path.is_symlink():
                continue
            if not _is_weight(name) and path.stat().st_size > MAX_AUX_FILE_BYTES:
                logger.warning(
                    "Not pushing %s: %d bytes is too large for a log or metrics file", path, path.stat().st_size
                )
                continue
            selected.append(path.relative_to(root).as_posix())
    return selected


def _is_weight(name: str) -> bool:
    return name.startswith(WEIGHT_PREFIXES) and name.endswith(WEIGHT_SUFFIXES)


def _is_excluded_dir(name: str) -> bool:
    return name in EXCLUDED_DIRS or name.startswith((".", "tmp"))


def _is_excluded_file(name: str) -> bool:
    return name.startswith(".") or name.endswith(EXCLUDED_SUFFIXES) or name.startswith(EXCLUDED_PREFIXES)


def push_output_dir(
    output_dir: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    api: HfApi | None = None,
    max_attempts: int = 5,
    commit_message: str = "Upload Whisper fine-tuned on KsponSpeech",
    sleep: Callable[[float], None] = time.sleep,
    base_delay: float = 4.0,
    max_delay: float = 120.0,
) -> str:
    """Create `repo_id` if needed and upload `files_to_push(output_dir)` in ONE commit; return the commit URL.

    One `create_commit` is atomic: the repo shows all of the run or none of it (`upload_folder` may split large
    uploads into several commits). Transient failures (5xx, 429, timeouts, dropped connections) are retried with
    exponential backoff, since huggingface_hub does not retry the final commit POST; 401/403/404 are not.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts is {max_attempts}; it must be at least 1")
    output_dir = Path(output_dir)
    paths = files_to_push(output_dir)
    _check_pushable(output_dir, repo_id, paths)
    api = api if api is not None else HfApi()
    retry = {"sleep": sleep, "base_delay": base_delay, "max_delay": max_delay, "max_attempts": max_attempts}
    context = {"output_dir": output_dir, "repo_id": repo_id}
    logger.info("Pushing %d files from %s to %s (private=%s)", len(paths), output_dir, repo_id, private)
    _with_retries(
        "create_repo",
        lambda: api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True),
        **retry,
        **context,
    )
    # Fresh operations on every attempt: create_commit mutates them and refuses to reuse committed ones.
    info = _with_retries(
        "create_commit",
        lambda: api.create_commit(
            repo_id,
            [CommitOperationAdd(path_in_repo=path, path_or_fileobj=output_dir / path) for path in paths],
            commit_message=commit_message,
            repo_type="model",
        ),
        **retry,
        **context,
    )
    logger.info("Pushed %s to %s (commit %s)", output_dir, info.commit_url, info.oid)
    return str(info.commit_url)


def _check_pushable(output_dir: Path, repo_id: str, paths: list[str]) -> None:
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output_dir {output_dir} does not exist; pass the folder the training run wrote")
    if not any("/" not in path and _is_weight(path) for path in paths):
        raise FileNotFoundError(
            f"No model weights (model.safetensors or shards) at the top of {output_dir}; refusing to push "
            f"{len(paths)} files without a model to {repo_id}. Was the final save_pretrained skipped?"
        )
    if "README.md" not in paths:
        logger.warning(
            "%s has no README.md; the repo will have no model card (call write_model_card first)", output_dir
        )


def _with_retries(
    action: str,
    call: Callable[[], T],
    *,
    max_attempts: int,
    sleep: Callable[[float], None],
    base_delay: float,
    max_delay: float,
    output_dir: Path,
    repo_id: str,
) -> T:
    attempt = 1
    while True:
        logger.info("%s %s: attempt %d/%d", action, repo_id, attempt, max_attempts)
        try:
            return call()
        except (httpx2.HTTPError, OSError, ValueError) as err:
            if not _is_transient(err) or attempt >= max_attempts:
                raise HubPushError(_failure_message(action, err, attempt, output_dir, repo_id)) from err
            delay = min(max_delay, base_delay * 2 ** (attempt - 1))
            logger.warning("%s %s failed (%s); retrying in %.0f s", action, repo_id, _describe(err), delay)
            sleep(delay)
            attempt += 1


def _is_transient(err: Exception) -> bool:
    if isinstance(err, HfHubHTTPError):
        status = _status_of(err)
        return status is not None and (status in _TRANSIENT_STATUS or status >= 500)
    if isinstance(err, OfflineModeIsEnabled):  # a ConnectionError, but retrying cannot help
        return False
    return isinstance(err, (*_TRANSIENT_ERRORS, ConnectionError))


def _failure_message(action: str, err: Exception, attempts: int, output_dir: Path, repo_id: str) -> str:
    status = _status_of(err)
    if status in (401, 403):
        cause = f"the token was rejected or cannot write to {repo_id} (HTTP {status}). {LOGIN_HELP}"
    elif status == 404:
        cause = f"{repo_id} was not found or is not visible to this token (HTTP 404); check --hub_model_id"
    elif isinstance(err, OfflineModeIsEnabled):
        cause = "HF_HUB_OFFLINE is set; unset it before pushing"
    else:
        cause = _describe(err)
    # Absolute, so the command works from any directory the user happens to be in when they read it.
    output_dir = output_dir.absolute()
    command = REPUSH_COMMAND.format(output_dir=shlex.quote(str(output_dir)), repo_id=shlex.quote(repo_id))
    return (
        f"Pushing to the Hub failed at {action} after {attempts} attempt(s): {cause}\n"
        f"The trained model is intact in {output_dir}; nothing there was changed. Once the cause is fixed, "
        f"push it again with:\n    {command}"
    )


def _status_of(err: Exception) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _describe(err: Exception) -> str:
    status = _status_of(err)
    prefix = f"HTTP {status}" if status is not None else type(err).__name__
    return f"{prefix}: {_first_line(err)}"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
