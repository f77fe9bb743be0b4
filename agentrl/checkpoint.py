"""Atomic checkpoints: written to a temp dir, then renamed, so a killed run never leaves a
half-written checkpoint; at most the last interval is lost."""
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

    def save(self, step: int, engine, tokenizer, state: dict) -> Path:
        final = self.root / f"{PREFIX}{step:08d}"
        tmp = self.root / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        engine.save(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
                   tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))  # written last: marks completeness
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.all()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load(self, directory: Path, engine) -> dict:
        directory = Path(directory)
        state_file = directory / "trainer_state.json"
        if not state_file.is_file():
            raise FileNotFoundError(f"{directory} is not a complete checkpoint (no trainer_state.json)")
        engine.load(directory)
        rng = torch.load(directory / "rng.pt", weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        return json.loads(state_file.read_text())
