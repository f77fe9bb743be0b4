"""``run.report_to``: the config switch, and Weights & Biases in offline mode (nothing leaves the
machine), read back from the run's own ``.wandb`` file."""
from __future__ import annotations

import importlib.util
import json
import math
import struct
import sys
from pathlib import Path

import pytest

from agentrl.config import ConfigError, parse_config

needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                                 reason="wandb not installed (pip install -e '.[wandb]')")


# -- the config --------------------------------------------------------------------------------
def test_report_to_defaults_to_jsonl_and_tensorboard_and_the_old_switch_still_works():
    assert parse_config({}).run.report_to == ["jsonl", "tensorboard"]
    off = parse_config({}, ["run.tensorboard=false"]).run
    assert off.report_to == ["jsonl"] and off.tensorboard is False
    only = parse_config({}, ["run.report_to=[jsonl]"]).run
    assert only.tensorboard is False  # read-only now, follows report_to (agentrl sft reads it)
    only.report_to = ["jsonl", "tensorboard"]  # assignment is validated like the file
    assert only.tensorboard is True
    assert parse_config({}, ["run.report_to=jsonl"]).run.report_to == ["jsonl"]  # one name is a list of one
    dumped = parse_config({}, ["run.tensorboard=false"]).model_dump(mode="json")
    assert parse_config(dumped).run.report_to == ["jsonl"]  # config.yaml of a run reloads as it was


@pytest.mark.parametrize("overrides, message", [
    (["run.tensorboard=true", "run.report_to=[jsonl]"], "drop it and list (or leave out) tensorboard in run.report_to"),
    (["run.report_to=[jsonl,jsonl]"], "lists a backend twice"),
    (["run.report_to=[mlflow]"], "must be one of 'jsonl', 'tensorboard' or 'wandb'"),
    (["run.tensorboard=maybe"], "run.tensorboard must be true or false"),
])
def test_bad_report_to_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError) as e:
        parse_config({}, overrides)
    assert message in str(e.value)


def test_report_to_wandb_without_the_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # how Python spells "not installed" to find_spec
    with pytest.raises(ConfigError) as e:
        parse_config({}, ["run.report_to=[jsonl,wandb]"])
    assert "pip install 'agentrl[wandb]'" in str(e.value)


# -- reading an offline run back ---------------------------------------------------------------
def wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file: a LevelDB log (32 KiB blocks of records with a
    7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte ``:W&B`` header,
    as wandb's own ``DataStore`` reader scans it; each payload is a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is zero padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def offline_run(wandb_dir: Path, run_id: str) -> list[Path]:
    """The offline run folders of ``run_id`` (one per process that logged to it), oldest first."""
    return sorted((wandb_dir / "wandb").glob(f"offline-run-*-{run_id}"))


def history(run_dir: Path) -> list[dict]:
    rows = []
    for r in wandb_records(next(run_dir.glob("run-*.wandb"))):
        if r.WhichOneof("record_type") == "history":
            rows.append({"/".join(i.nested_key) if i.nested_key else i.key: json.loads(i.value_json) for i in r.history.item})
    return rows


def run_record(run_dir: Path):
    return next(r.run for r in wandb_records(next(run_dir.glob("run-*.wandb"))) if r.WhichOneof("record_type") == "run")


def metric_keys(row: dict) -> set[str]:
    """What we logged: W&B adds ``_step`` / ``_runtime`` / ``_timestamp``, and a table is a
    reference (``trajectories/path``, ...)."""
    return {k for k in row if not k.startswith("_") and not k.startswith("trajectories/")}


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):  # table staging, settings: in tmp too
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    (tmp_path / "wandb_dir").mkdir()
    return tmp_path / "wandb_dir"


# -- the writer --------------------------------------------------------------------------------
@needs_wandb
def test_wandb_gets_the_tensorboard_names_and_values(tmp_path, offline_wandb):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from agentrl.metrics import MetricsWriter

    out = tmp_path / "run"
    writer = MetricsWriter(out, report_to=["jsonl", "tensorboard", "wandb"], run_name="names", run_config={"a": 1})
    records = [{"reward/mean": 0.25, "train/loss": 1.5, "guard/reasons": "", "train/kl": float("nan")},
               {"reward/mean": 0.75, "train/loss": 0.5, "guard/reasons": "", "train/kl": 0.1}]
    for step, record in enumerate(records, start=1):
        writer.write(record, step)
    writer.close()
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    run_id = (out / "wandb_run_id").read_text().strip()
    rows = history(offline_run(offline_wandb, run_id)[0])
    assert {k for row in rows for k in metric_keys(row)} == set(events.Tags()["scalars"]) | {"step"}
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["reward/mean"] for r in rows] == [e.value for e in events.Scalars("reward/mean")] == [0.25, 0.75]
    assert "train/kl" not in rows[0] and rows[1]["train/kl"] == pytest.approx(0.1)  # NaN skipped, as in TensorBoard
    jsonl = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert jsonl[0]["guard/reasons"] == "" and math.isnan(jsonl[0]["train/kl"])  # the JSONL keeps every value


# -- a real training run -----------------------------------------------------------------------
def tiny_train_cfg(out: Path, *overrides):
    from agentrl.config import load_config
    from agentrl.model import cached_tiny_model

    return load_config("configs/retool_tiny_cpu.yaml", [
        f"model.path={cached_tiny_model()}", "model.init_if_missing=null", f"run.output_dir={out}", "run.name=wandb-test",
        "run.progress=false", "run.report_to=[jsonl,wandb]", "run.log_trajectories_every=1", "run.save_trajectories=2",
        "rollout.tasks_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens_per_turn=12",
        "rollout.max_total_tokens=200", "env.kwargs.max_turns=2", *overrides])


def train(cfg, resume=False):
    from agentrl.trainer import GRPOTrainer

    trainer = GRPOTrainer(cfg, resume=resume)
    try:
        return trainer.train()
    finally:
        trainer.close()


@needs_wandb
def test_offline_training_run_logs_the_jsonl_metrics_a_trajectory_table_and_resumes(tmp_path, offline_wandb):
    out = tmp_path / "run"
    train(tiny_train_cfg(out, "run.steps=2", "run.save_every=2"))
    assert not (out / "tensorboard").exists()
    run_id = (out / "wandb_run_id").read_text().strip()
    [run_dir] = offline_run(offline_wandb, run_id)
    rows = history(run_dir)
    jsonl = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in jsonl] == [1, 2]
    for row, line in zip(rows, jsonl):  # every number of metrics.jsonl, under its name and with its value
        numbers = {k: v for k, v in line.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        assert metric_keys(row) == set(numbers)
        assert all(row[k] == pytest.approx(v) for k, v in numbers.items())

    # the W&B run carries the run's name, project and whole config
    run = run_record(run_dir)
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert run.display_name == "wandb-test" and run.project == "agentrl"
    assert config["run"]["report_to"] == ["jsonl", "wandb"] and config["rollout"]["group_size"] == 2

    # a table of trajectories at each step (log_trajectories_every=1), save_trajectories rows each
    for row in rows:
        assert row["trajectories/_type"] == "table-file" and row["trajectories/nrows"] == 2
        table = json.loads((run_dir / "files" / row["trajectories/path"]).read_text())
        assert table["columns"][:4] == ["step", "task_id", "group", "reward"]
        assert {r[0] for r in table["data"]} == {row["step"]}
        prompt, completion = table["data"][0][-2:]
        assert "<|im_start|>" in prompt and completion  # the decoded prompt and the turns' text
    saved = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    assert [t["reward"] for t in saved if t["step"] == 2] == [r[3] for r in table["data"]]

    # --resume continues the same W&B run from the checkpoint's step
    train(tiny_train_cfg(out, "run.steps=3", "run.save_every=2"), resume=True)
    assert (out / "wandb_run_id").read_text().strip() == run_id
    first, resumed = offline_run(offline_wandb, run_id)
    assert [r["step"] for r in history(resumed)] == [3]
