"""The one typed config (kspon_whisper/config.py) as users give it: a YAML/JSON file and the command line, --help, and
every check, in words, before any work.
"""

import dataclasses
import json
import os
import re
import sys

import pytest

import train_accelerate
from kspon_dataset.normalize import TRANSCRIPT_FORMS
from kspon_whisper.export import QUANTIZATIONS
from tests.processes import run_ok
from train_accelerate import TrainConfig, parse_config


def test_yaml_values_are_typed_and_the_command_line_wins(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("data_dir: /data/KsponSpeech\nlearning_rate: 1e-5\nmax_steps: 100\nlr_scheduler: cosine\n")
    cfg = parse_config(["--config", str(config), "--max_steps", "7", "--streaming", "false"])
    assert cfg.max_steps == 7 and cfg.streaming is False  # the command line wins
    assert cfg.data_dir == "/data/KsponSpeech" and cfg.lr_scheduler == "cosine"  # the file fills in the rest
    assert cfg.learning_rate == 1e-5 and isinstance(cfg.learning_rate, float)
    json_config = tmp_path / "run.json"
    json_config.write_text(json.dumps({"data_dir": "/d", "max_steps": 3, "final_eval_splits": ["test"]}))
    cfg = parse_config(["--config", str(json_config)])
    assert (cfg.max_steps, cfg.final_eval_splits) == (3, ["test"])


def test_unknown_yaml_key_is_named(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("data_dir: /d\nmax_steps: 5\nlearning_rte: 1e-5\n")
    with pytest.raises(ValueError, match=r"unknown options \['learning_rte'\]"):
        parse_config(["--config", str(config)])


@pytest.mark.parametrize(
    "option, value, valid",
    [
        ("lr_scheduler", "cosine_with_restarts", "('linear', 'cosine')"),
        ("report_to", "mlflow", "('tensorboard', 'trackio', 'wandb', 'none')"),
        ("split_scheme", "oficial", "('random', 'random_utterance', 'official')"),
        ("export_ct2", "int4", "('float16', 'int8_float16', 'int8', 'float32', None)"),
    ],
)
def test_invalid_choice_lists_the_valid_values(option, value, valid, tmp_path, capsys):
    """argparse refuses a bad choice on the command line; one from a --config file skips its check, so the config's."""
    with pytest.raises(SystemExit):
        parse_config(["--data_dir", "/d", "--max_steps", "5", f"--{option}", value])
    assert f"--{option}/--{option.replace('_', '-')}: invalid choice: '{value}'" in capsys.readouterr().err
    config = tmp_path / "run.yaml"
    config.write_text(f"data_dir: /d\nmax_steps: 5\n{option}: {value}\n")
    with pytest.raises(ValueError, match=re.escape(f"--{option} '{value}' is not one of {valid}.")):
        parse_config(["--config", str(config)])


def _help_entries(text: str) -> dict[str, str]:
    """`--option` -> the text argparse prints after it, whitespace collapsed."""
    entries = {}
    for entry in re.split(r"\n(?=  -)", text.split("\noptions:\n", 1)[1]):
        invocation, *help_text = re.split(r"\s{2,}|\n", entry.strip(), maxsplit=1)
        entries[invocation.split()[0].rstrip(",")] = " ".join(" ".join(help_text).split())
    return entries


@pytest.mark.slow
def test_help_describes_every_option_with_its_default_choices_and_range():
    """`python train_accelerate.py --help` as a user runs it: no option without a description."""
    result = run_ok(
        [sys.executable, "train_accelerate.py", "--help"], timeout_s=120, env=dict(os.environ, COLUMNS="119")
    )
    assert result.stdout.startswith("usage: train_accelerate.py [-h] [--config FILE] [--OPTION VALUE ...]")
    assert "Fine-tune Whisper on KsponSpeech" in result.stdout and "accelerate launch" in result.stdout  # the runbook
    entries = _help_entries(result.stdout)
    fields = [f.name for f in dataclasses.fields(train_accelerate.TrainConfig)]
    missing = [name for name in fields if f"--{name}" not in entries]
    described = {name: re.sub(r"\(default: .*\)$", "", entries.get(f"--{name}", "")).strip() for name in fields}
    undescribed = [name for name, words in described.items() if not words]
    assert not missing and not undescribed, f"--help lists no {missing}; it gives no description for {undescribed}"
    assert not [name for name in fields if not re.search(r"\(default: .*\)$", entries[f"--{name}"])]
    assert "--config" in entries and "YAML/JSON" in entries["--config"]
    assert f"--dataset_config {{{','.join(TRANSCRIPT_FORMS)}}}" in result.stdout
    assert f"--export_ct2 {{{','.join(QUANTIZATIONS)}}}" in result.stdout
    assert entries["--split_scheme"].endswith("(default: random)")
    assert entries["--per_device_batch_size"].endswith("; at least 1 (default: 16)")
    assert entries["--learning_rate"].endswith("; more than 0 (default: 1e-05)")
    # not the copy of --streaming's help HfArgumentParser gives it, which argparse follows with "(default: False)"
    assert entries["--no_streaming"] == "same as --streaming false"


def test_epochs_need_no_max_steps_streaming_or_not():
    assert parse_config(["--data_dir", "/d", "--num_epochs", "2"]).streaming  # the index gives a pass's length
    assert parse_config(["--data_dir", "/d", "--streaming", "false"]).num_epochs == 3.0


def test_missing_data_dir_says_what_to_pass():
    with pytest.raises(ValueError, match="--data_dir is required"):
        parse_config(["--max_steps", "5"])


def test_final_eval_splits_from_yaml_are_names_and_typos_are_refused(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("data_dir: /d\nmax_steps: 1\nfinal_eval_splits: test\n")
    assert parse_config(["--config", str(config)]).final_eval_splits == ["test"]
    with pytest.raises(ValueError, match=r"\['eval_clena'\] are not splits of KsponSpeech"):
        TrainConfig(data_dir="/d", max_steps=1, final_eval_splits=["eval_clena"])


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("log_every", 0, "--log_every must be at least 1, got 0"),
        ("gradient_accumulation_steps", 0, "--gradient_accumulation_steps must be at least 1"),
        ("max_steps", -5, "--max_steps must be at least 0, got -5"),
        ("max_grad_norm", -1.0, "--max_grad_norm must be more than 0, got -1.0"),
        ("learning_rate", 0.0, "--learning_rate must be more than 0"),
        ("save_total_limit", 0, "--save_total_limit must be at least 1"),
        ("resume_from_checkpoint", "/nope", "--resume_from_checkpoint /nope is not a folder"),
        ("ddp_timeout", 0, "--ddp_timeout must be at least 1, got 0"),
    ],
)
def test_every_option_is_validated_before_any_work(option, value, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        TrainConfig(**{"data_dir": "/d", "max_steps": 1, option: value})


def test_zero_epochs_and_bad_yaml_are_refused_in_words(tmp_path):
    with pytest.raises(ValueError, match="--num_epochs must be more than 0"):
        TrainConfig(data_dir="/d", streaming=False, num_epochs=0)
    broken = tmp_path / "broken.yaml"
    broken.write_text("max_steps: [1,\n")
    with pytest.raises(ValueError, match=f"--config {broken} cannot be read as YAML/JSON"):
        parse_config(["--config", str(broken)])
    broken.write_text("hello\n")
    with pytest.raises(ValueError, match="must map option names to values"):
        parse_config(["--config", str(broken)])
    # --push_only checks only what a push needs, exactly as the push-failure message prints the command
    assert parse_config(["--push_only", "--output_dir", "runs/x", "--hub_model_id", "me/x"]).push_only
