"""Start-up checks that every machine of a run sees the same corpus and the same output folder.

On one machine both hold by construction; across machines they are assumptions that fail silently. Every rank draws
the same permutation of the training split from its own copy of the corpus (`data.rank_order`), so a copy that
lacks an archive, or holds another one, gives that machine's ranks another order: some utterances are trained twice,
others never, and nothing else notices. And every rank writes its data position into the checkpoint folder that rank
0 then verifies whole, so a machine-local `--output_dir` breaks every checkpoint and every resume.

`check_machines_agree` runs on every rank before the model loads. Each rank fingerprints the corpus it sees (each
archive's size and central-directory digest, `kspon_dataset.corpus.corpus_fingerprint`; 0.2-0.4 s for the whole
corpus, benchmarks/startup_checks.py) and looks for a file rank 0 has just written into `--output_dir`. The views are
gathered on every rank, so a disagreement raises the same message everywhere, naming the machine and the archive, and
no rank is left waiting at a collective.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from functools import partial
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import gather_object

from kspon_dataset.corpus import corpus_fingerprint

from .checkpoints import on_every_rank, on_rank_zero

# A shared file system may show another machine's new file a moment late (NFS attribute caching); a folder that is
# not shared never shows it, so this is only what a folder that is shared gets.
SHARED_FILE_WAIT_S = 5.0
POLL_S = 0.1


def check_machines_agree(accelerator: Accelerator, data_dir: str, output_dir: str) -> None:
    """Raise on every rank, with one message naming the machines, unless every rank sees identical corpus archives in
    `data_dir` and one shared `output_dir`. Every rank must call this."""
    # Rank 0 writes a file into its --output_dir and every rank looks for it in its own: only a shared folder shows it.
    marker = Path(output_dir) / on_rank_zero(accelerator, partial(write_marker, Path(output_dir)))
    fingerprint = on_every_rank(accelerator, partial(corpus_fingerprint, data_dir))  # a broken ZIP stops all ranks
    view = {
        "host": socket.gethostname(),
        "machine": os.environ.get("GROUP_RANK"),  # the launcher's machine rank (torch's launcher, under accelerate)
        "rank": accelerator.process_index,
        "data_dir": data_dir,
        "output_dir": output_dir,
        "corpus": fingerprint,
        "sees_output_dir": sees(marker),
    }
    views = gather_object([view])
    if accelerator.is_main_process:  # every rank has looked
        with contextlib.suppress(OSError):
            marker.unlink()
    problems = [corpus_disagreement(views), output_dir_disagreement(views, marker.name)]
    if any(problems):
        raise RuntimeError("\n\n".join(p for p in problems if p))


def write_marker(output_dir: Path) -> str:
    """The name of a new file in output_dir, which holds its own name: a file an earlier run left cannot pass."""
    marker = output_dir / f".shared-folder-check-{uuid.uuid4().hex}"
    output_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(marker.name)
    return marker.name


def sees(marker: Path) -> bool:
    """Whether this rank finds rank 0's file, waiting a little for a shared file system to show it."""
    deadline = time.monotonic() + SHARED_FILE_WAIT_S
    while True:
        with contextlib.suppress(OSError):
            if marker.read_text() == marker.name:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)


def where(views: list[dict]) -> str:
    """`host (machine 1, ranks 8-15)`, for ranks of one machine; ranks of several machines, one such part each."""
    parts = []
    for view in views:
        machine = "" if view["machine"] is None else f"machine {view['machine']}, "
        if parts and parts[-1][0] == (view["host"], machine) and parts[-1][2] == view["rank"] - 1:
            parts[-1][2] = view["rank"]
        else:
            parts.append([(view["host"], machine), view["rank"], view["rank"]])
    return "; ".join(
        f"{host} ({machine}{f'rank {first}' if first == last else f'ranks {first}-{last}'})"
        for (host, machine), first, last in parts
    )


def corpus_disagreement(views: list[dict]) -> str:
    """'' when every rank sees the same archives; else, for each archive that differs, what each machine sees."""
    lines = []
    for archive in sorted({name for view in views for name in view["corpus"]}):
        seen = [view["corpus"].get(archive) for view in views]
        if all(this == seen[0] for this in seen):
            continue
        lines.append(f"  {archive}:")
        for this in dict.fromkeys(seen):  # rank 0's view first
            state = "missing" if this is None else f"{this[0]:,} bytes, central directory sha256 {this[1][:16]}"
            if this is not None and seen[0] is not None and this != seen[0]:
                state += " (another size than rank 0's)" if this[0] != seen[0][0] else " (other contents, same size)"
            holders = [view for view, other in zip(views, seen, strict=True) if other == this]
            data_dirs = sorted({view["data_dir"] for view in holders})
            lines.append(f"    {state} in --data_dir {', '.join(data_dirs)} on {where(holders)}")
    if not lines:
        return ""
    head = (
        "The machines of this run do not see the same corpus in --data_dir. Every rank draws the same order of "
        "utterances from its own copy, so different copies would train some utterances twice and others never:"
    )
    tail = (
        "Make the copies identical on every machine (copy the archive from a machine that has it; `ls -l` and "
        "`sha256sum` compare them), then start the run again."
    )
    return "\n".join([head, *lines, tail])


def output_dir_disagreement(views: list[dict], marker: str) -> str:
    """'' when every rank sees the file rank 0 wrote into its --output_dir; else which machines do not."""
    blind = [view for view in views if not view["sees_output_dir"]]
    if not blind:
        return ""
    return (
        f"--output_dir {views[0]['output_dir']} is not one folder shared by every machine: {where(blind)} cannot "
        f"see the file {marker} that rank 0 wrote there. Every rank writes its part of each checkpoint there and "
        "rank 0 verifies the whole, so make --output_dir a shared folder (NFS, Lustre, ...) mounted at the same "
        "path on every machine, then start the run again."
    )
