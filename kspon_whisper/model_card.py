"""The model card: `model_card.md`, a Jinja template rendered by `ModelCard.from_template`, with a model-index.

Written at the end of every run, pushed or not; `kspon_whisper.hub` uploads it with the model.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from kspon_dataset.corpus import CORPUS_HOURS, HOMEPAGE, SPLIT_SCHEMES
from kspon_dataset.kspon_dataset import _CITATION as KSPON_CITATION
from kspon_dataset.normalize import TRANSCRIPT_FORMS

from .extra_data import PLAIN_TEXT_NORMALIZATION, SpeechSet
from .lora import card_sentence as lora_sentence
from .metrics import METRICS

logger = logging.getLogger(__name__)

CARD_TEMPLATE = Path(__file__).with_name("model_card.md")
OFFICIAL_EVAL_SPLITS = {"eval_clean": 3000, "eval_other": 3000}  # the official evaluation sets and their sizes
FRAMEWORKS = ("transformers", "torch", "accelerate", "datasets", "huggingface_hub")
# Not hyperparameters: where the run read and wrote, and how it published. Local paths do not belong in a card.
DATASET_OPTIONS = ("eval_datasets", "train_datasets")  # Hub ids stay; local paths are cut to their last part
NOT_HYPERPARAMETERS = {"data_dir", "output_dir", "resume_from_checkpoint", "trained_ids_dir", "push_only"}


def write_model_card(
    output_dir: str | Path,
    *,
    hub_model_id: str | None,
    base_model: str,
    metrics: dict[str, dict[str, float]],
    hyperparameters: dict[str, object],
    scoring_normalization: str,
    dataset_config: str = "spelling",
    split_scheme: str = "random",
    other_sets: dict[str, SpeechSet] | None = None,
    before_training: dict[str, dict[str, float]] | None = None,
) -> Path:
    """Write `output_dir/README.md`: metadata with a model-index (one result per split and metric) and the card.

    `metrics` maps a split to `kspon_whisper.metrics.score` output (fractions; `num_*` counts ride along). With
    eval_clean / eval_other scored, the card sets the model beside published systems. `other_sets` (label -> set)
    says which splits of `metrics` are other corpora (`--eval_datasets`): each gets its own model-index entry under
    its own dataset. `before_training` (split -> metrics of the untouched model) puts zero-shot beside fine-tuned.
    """
    other_sets = other_sets or {}
    if dataset_config not in TRANSCRIPT_FORMS:
        raise ValueError(
            f"dataset_config is {dataset_config!r}; expected a transcript form: {', '.join(TRANSCRIPT_FORMS)}"
        )
    if split_scheme not in SPLIT_SCHEMES:
        raise ValueError(f"split_scheme is {split_scheme!r}; expected one of {', '.join(SPLIT_SCHEMES)}")
    percents = {split: _percents(split, values) for split, values in metrics.items()}
    display_names = {metric.name: metric.display_name for metric in METRICS}
    output_dir = Path(output_dir)
    model_name = hub_model_id.split("/")[-1] if hub_model_id else output_dir.resolve().name
    local_base = Path(base_model).exists()  # a local folder is no Hub id: no link, and no base_model metadata
    results = [
        EvalResult("automatic-speech-recognition", metric_type=key, metric_value=value, metric_name=display_names[key],
                   **_dataset(split, other_sets, dataset_config))
        for split, values in percents.items()
        for key, value in values.items()
    ]  # fmt: skip
    card_data = ModelCardData(
        language="ko",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="automatic-speech-recognition",
        base_model=None if local_base else base_model,
        tags=["automatic-speech-recognition", "whisper", "korean", "kspon-speech"],
        metrics=sorted({result.metric_type for result in results}) or None,
        model_name=model_name,
        eval_results=results or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        model_name=model_name,
        hub_model_id=hub_model_id,
        base_model=base_model,
        local_base=local_base,
        corpus_hours=CORPUS_HOURS,
        corpus_homepage=HOMEPAGE,
        dataset_config=dataset_config,
        split_scheme=split_scheme,
        metrics=METRICS,
        results={split: values for split, values in percents.items() if split not in other_sets},
        other_results={split: values for split, values in percents.items() if split in other_sets},
        other_sources={label: spec.card_name for label, spec in other_sets.items()},
        plain_normalization=PLAIN_TEXT_NORMALIZATION,
        before={split: _percents(split, values) for split, values in (before_training or {}).items()},
        before_scored={split: values.get("num_scored") for split, values in (before_training or {}).items()},
        scored={split: values.get("num_scored") for split, values in metrics.items()},
        official=[f"`{split}`" for split in OFFICIAL_EVAL_SPLITS if split in percents],
        held_out=[f"`{split}`" for split in ("validation", "test") if split in percents],
        partial=[
            f"`{split}` ({metrics[split]['num_scored']:,} utterances scored; the official set has {size:,})"
            for split, size in OFFICIAL_EVAL_SPLITS.items()
            if metrics.get(split, {}).get("num_scored", size) != size
        ],
        scoring_normalization=scoring_normalization,
        lora_sentence=lora_sentence(hyperparameters),
        feature_padding=f"{share:.0%}" if (share := hyperparameters.get("feature_padding_probability")) else None,
        ct2_folders=sorted(p.name for p in output_dir.glob("ct2-*") if (p / "model.bin").is_file()),
        hyperparameters=sorted(
            (k, _without_local_paths(k, v)) for k, v in hyperparameters.items() if k not in NOT_HYPERPARAMETERS
        ),
        train_sets=_train_sets(hyperparameters),
        versions=[(name, importlib.metadata.version(name)) for name in FRAMEWORKS],  # all are requirements
        kspon_citation=KSPON_CITATION.strip(),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    card.save(output_dir / "README.md")
    logger.info("Wrote model card %s", output_dir / "README.md")
    return output_dir / "README.md"


def _without_local_paths(key: str, value: object) -> object:
    """--eval_datasets / --train_datasets with each local folder by its name: a card carries no local paths."""
    if key not in DATASET_OPTIONS or not value:
        return value
    return "+".join(Path(name).name if Path(name).exists() else name for name in str(value).split("+"))


def _train_sets(hyperparameters: dict) -> list[tuple[str, str]]:
    """(dataset, share of the training examples) for KsponSpeech and each --train_datasets set."""
    names = str(_without_local_paths("train_datasets", hyperparameters.get("train_datasets")) or "")
    if not names:
        return []
    weights = [float(w) for w in str(hyperparameters["train_dataset_weights"]).split("+")]
    shares = [("KsponSpeech", 1 - sum(weights)), *zip(names.split("+"), weights, strict=True)]
    return [(name, f"{share:.0%}") for name, share in shares]


def _dataset(split: str, other_sets: dict[str, SpeechSet], dataset_config: str) -> dict[str, str | None]:
    """The dataset fields of a split's model-index results: one entry per KsponSpeech split and per other set."""
    if split in other_sets:
        spec = other_sets[split]
        names = {"dataset_type": spec.card_name, "dataset_name": split}
        return names | {"dataset_config": spec.config, "dataset_split": spec.split}
    # dataset_type names the builder in kspon_dataset/: the corpus is on AI Hub, not on the Hub
    names = {"dataset_type": "kspon_speech", "dataset_name": "KsponSpeech"}
    return names | {"dataset_config": dataset_config, "dataset_split": split}


def _percents(split: str, values: dict[str, float]) -> dict[str, float]:
    """The split's metrics in percent, rounded to 2 decimals, after checking each is a plausible fraction."""
    known = [metric.name for metric in METRICS]
    percents = {}
    for key, value in values.items():
        if key.startswith("num_"):
            continue
        if key not in known:
            raise ValueError(f"metrics[{split!r}] has unknown metric {key!r}; expected {', '.join(known)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"metrics[{split!r}][{key!r}] is {value!r}; expected a finite, non-negative fraction such as 0.0785. "
                "A NaN or inf usually means the split was empty or evaluation diverged."
            )
        percents[key] = round(100 * float(value), 2)
    return percents
