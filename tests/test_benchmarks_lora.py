"""benchmarks/lora_memory.py: its parameter arithmetic against the closed form, and its RESULTS.md section."""

from benchmarks import lora_memory
from benchmarks.lora_memory import Setup, parameter_bytes
from kspon_whisper.random_whisper import ARCHITECTURES


def test_parameter_counts_match_the_closed_form_for_large_v3():
    arch = ARCHITECTURES["large-v3"]
    d, ffn, layers = arch.d_model, arch.ffn_dim, arch.encoder_layers
    full = parameter_bytes(Setup(0))
    # Every adapted Linear(in, out) adds rank x (in + out); the encoder has 4 projections a layer, the decoder 8.
    attention = 16 * (d + d) * layers * (4 + 8)
    assert parameter_bytes(Setup(16))["trainable"] == attention == 15_728_640
    mlp = 16 * (d + ffn) * 2 * layers * 2
    lora = parameter_bytes(Setup(16, mlp=True))
    assert lora["trainable"] == attention + mlp
    assert lora["total"] == full["total"] + lora["trainable"]
    assert full["trainable"] == full["total"] - arch.d_model * 1500  # only the encoder's positions are frozen
    assert (lora["weights"], lora["gradients"], lora["adamw"]) == (
        4 * lora["total"],
        4 * lora["trainable"],
        8 * lora["trainable"],
    )


def test_write_results_replaces_only_its_own_section(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(lora_memory, "RESULTS", results)
    results.write_text("# Benchmarks\n\n## Before\n\nkept\n")
    lora_memory.write_results("| first |", "cmd", 60)  # appended
    results.write_text(results.read_text() + "\n## After\n\nkept too\n")
    lora_memory.write_results("| second |", "cmd", 60)  # replaced in place
    text = results.read_text()
    assert text.count(lora_memory.SECTION) == 1 and "| second |" in text and "| first |" not in text
    assert text.startswith("# Benchmarks\n\n## Before\n\nkept\n\n" + lora_memory.SECTION)
    assert text.endswith("| second |\n\n## After\n\nkept too\n")
