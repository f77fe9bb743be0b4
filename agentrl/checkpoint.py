"""Atomic checkpoints: written to a temp dir, then renamed, so a killed run never leaves a
half-written checkpoint; at most the last interval is lost.

Data parallel (the engine's ``rank`` / ``world_size`` / ``barrier``): every rank calls
:meth:`Checkpointer.save` and :meth:`Checkpointer.load` (the engine's ``save``/``load`` are
collectives). Rank 0 alone clears and creates the temp dir, writes the tokenizer and
``trainer_state.json`` (the completeness marker), renames and prunes; each rank writes its own
RNG state ``rng_rank{r}.pt``. The directory must be on a file system all ranks share."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

PREFIX = "step_"


class Checkpointer:
    def __init__(self, root: Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def all(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        done = [p for p in self.root.iterdir() if p.name.startswith(PREFIX) and (p / "trainer_state.json").is_file()]
        return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def save(self, step: int, engine, tokenizer, state: dict, critic=None) -> Path:
        """``critic`` (``agentrl.critic.Critic``, one process): its weights and optimiser go under ``critic/``."""
        rank, main = getattr(engine, "rank", 0), getattr(engine, "is_main", True)
        barrier = getattr(engine, "barrier", lambda: None)
        final = self.root / f"{PREFIX}{step:08d}"
        tmp = self.root / f".tmp-{final.name}"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        engine.save(tmp)
        if critic is not None:
            critic.save(tmp / "critic")
        torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
                   tmp / f"rng_rank{rank}.pt")
        barrier()  # every rank's share is on disk
        if main:
            tokenizer.save_pretrained(tmp)
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))  # written last: marks completeness
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in self.all()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()  # nobody looks for the checkpoint before it is renamed
        return final

    def load(self, directory: Path, engine, critic=None) -> dict:
        directory = Path(directory)
        state_file = directory / "trainer_state.json"
        if not state_file.is_file():
            raise FileNotFoundError(f"{directory} is not a complete checkpoint (no trainer_state.json)")
        engine.load(directory)
        if critic is not None:
            critic.load(directory / "critic")
        rng_file = directory / f"rng_rank{getattr(engine, 'rank', 0)}.pt"
        if not rng_file.is_file():
            rng_file = directory / "rng.pt"  # checkpoints written before per-rank RNG files
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        return json.loads(state_file.read_text())
