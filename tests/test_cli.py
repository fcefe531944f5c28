"""The CLI end to end, as a user runs it: a real subprocess, a tiny open_clip model saved as a
local-dir, and an image folder the test writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cbm_core.backbone import export_local_dir
from conftest import TINY_VIT
from helpers import write_class_folder

ROOT = Path(__file__).resolve().parent.parent


def run(*args, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "cbm_core", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_configs):
    import torch

    from cbm_core.backbone import load_backbone

    tmp = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    export_local_dir(load_backbone("tiny-vit:random", device="cpu").model, TINY_VIT, tmp / "model")
    data = write_class_folder(tmp / "data", per_class=10)
    (data / "red" / "broken.png").write_bytes(b"not a png")
    (tmp / "concepts.txt").write_text("red\nblue\ngreen\nround shape\nwhite background\n")
    os.environ["CBM_CACHE_DIR"] = str(tmp / "cache")
    return tmp


def test_build_info_predict_evaluate_edit(world):
    spec = f"local-dir:{world / 'model'}"
    out = run("build", "--backbone", spec, "--data", str(world / "data"), "--concepts", str(world / "concepts.txt"),
              "--template", "a photo of {}.", "--lam", "1e-3", "--out", str(world / "bundle"), "--device", "cpu")
    summary = json.loads(out.stdout)
    assert summary["n_train"] + summary["n_val"] == 30 and summary["skipped_images"] == 1
    assert "broken.png" in out.stderr

    info = json.loads(run("info", "--bundle", str(world / "bundle")).stdout)
    assert info["classes"] == ["blue", "green", "red"] and info["n_concepts"] == 5

    image = str(world / "data" / "green" / "001.png")
    pred = json.loads(run("predict", "--bundle", str(world / "bundle"), image, "--json", "--device", "cpu").stdout)
    assert pred[0]["prediction"] in info["classes"] and len(pred[0]["top_concepts"]) == 5

    from cbm_core import Pipeline

    exp = Pipeline.from_bundle(world / "bundle", device="cpu").explain(image)
    assert pred[0]["prediction"] == exp.class_names[int(exp.predicted[0])]

    ev = json.loads(run("evaluate", "--bundle", str(world / "bundle"), "--data", str(world / "data"),
                        "--device", "cpu", "--quiet").stdout)
    assert 0 <= ev["accuracy"] <= 1 and ev["n"] == 30

    edited = run("edit", "--bundle", str(world / "bundle"), "--prune", "white background", "--out",
                 str(world / "edited.zip"), "--data", str(world / "data"), "--device", "cpu", "--quiet")
    assert "accuracy" in edited.stdout and "saved edited bundle" in edited.stdout
    info2 = json.loads(run("info", "--bundle", str(world / "edited.zip")).stdout)
    assert info2["edit_log"][0]["concepts"] == ["white background"]


def test_errors_are_one_clear_line(world):
    (world / "empty.txt").write_text("")
    proc = run("build", "--backbone", f"local-dir:{world / 'model'}", "--data", str(world / "data"),
               "--concepts", str(world / "empty.txt"), "--out", str(world / "x"), check=False)
    assert proc.returncode == 2 and "empty.txt" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("info", "--bundle", str(world / "nope"), check=False)
    assert proc.returncode == 2 and "No bundle" in proc.stderr


def test_help_explains_the_commands():
    text = run("--help").stdout
    for command in ("build", "predict", "evaluate", "edit", "info"):
        assert command in text
