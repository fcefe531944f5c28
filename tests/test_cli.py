"""The CLI end to end, as a user runs it: a real subprocess, a tiny open_clip model saved as a
local-dir, and an image folder the test writes."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cbm_core.backbone import export_local_dir
from conftest import TINY_VIT
from helpers import edit_csv_cell, write_class_folder

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
    refused = run("predict", "--bundle", str(world / "bundle"), image, "--device", "cpu", check=False)
    assert refused.returncode == 2 and "--trust-backbone" in refused.stderr and spec in refused.stderr
    pred = json.loads(run("predict", "--bundle", str(world / "bundle"), image, "--json", "--device", "cpu",
                          "--trust-backbone").stdout)
    assert pred[0]["prediction"] in info["classes"] and len(pred[0]["top_concepts"]) == 5

    from cbm_core import Pipeline

    exp = Pipeline.from_bundle(world / "bundle", device="cpu", trust_backbone=True).explain(image)
    assert pred[0]["prediction"] == exp.class_names[int(exp.predicted[0])]

    ev = json.loads(run("evaluate", "--bundle", str(world / "bundle"), "--data", str(world / "data"),
                        "--device", "cpu", "--quiet", "--trust-backbone").stdout)
    assert 0 <= ev["accuracy"] <= 1 and ev["n"] == 30

    edited = run("edit", "--bundle", str(world / "bundle"), "--prune", "white background", "--out",
                 str(world / "edited.zip"), "--data", str(world / "data"), "--device", "cpu", "--quiet", "--trust-backbone")
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


def test_build_refuses_bad_options_before_any_work(world):
    base = ["build", "--backbone", f"local-dir:{world / 'model'}", "--data", str(world / "data"),
            "--concepts", str(world / "concepts.txt"), "--device", "cpu", "--quiet"]
    (world / "taken").mkdir(exist_ok=True)
    (world / "taken" / "manifest.json").write_text("{}")
    for extra, message in ((["--out", str(world / "taken")], "--overwrite"),
                           (["--lam", "nan", "--out", str(world / "n")], "finite"),
                           (["--lam", "-1", "--out", str(world / "n")], r"\[0, 10\]"),
                           (["--template", "a {} of {}", "--out", str(world / "n")], "exactly one"),
                           (["--recipe", "pcmb", "--out", str(world / "n")], "pcbm")):
        proc = run(*base, *extra, check=False)
        assert proc.returncode == 2 and re.search(message, proc.stderr), (extra, proc.stderr)
        assert "Traceback" not in proc.stderr and "encoding" not in proc.stderr
    assert not (world / "n").exists()


def test_compare_runs_recipes_and_baselines_on_one_cache(world):
    out = run("compare", "--backbone", f"local-dir:{world / 'model'}", "--data", str(world / "data"),
              "--concepts", str(world / "concepts.txt"), "--recipe", "pcbm", "--set", "pcbm.lam=2e-3",
              "--nec", "2", "--json", str(world / "cmp.json"), "--device", "cpu", "--quiet")
    for name in ("pcbm", "linear-probe", "random-concepts", "zero-shot"):
        assert name in out.stdout
    saved = json.loads((world / "cmp.json").read_text())
    rows = {r["recipe"]: r for r in saved["rows"]}
    assert rows["pcbm"]["params"]["lam"] == 2e-3 and rows["pcbm"]["at_nec"]["nec"] <= 2
    assert saved["n_train"] + saved["n_val"] + saved["n_test"] == 30
    bad = run("compare", "--backbone", f"local-dir:{world / 'model'}", "--data", str(world / "data"),
              "--recipe", "pcbm", "--set", "pcbm.lam=-3", "--quiet", check=False)
    assert bad.returncode == 2 and "lam" in bad.stderr and "Traceback" not in bad.stderr
    nonsense = run("compare", "--backbone", f"local-dir:{world / 'model'}", "--data", str(world / "data"),
                   "--concepts", str(world / "concepts.txt"), "--nec", "nan", "--device", "cpu", "--quiet", check=False)
    assert nonsense.returncode == 2 and "at least 1" in nonsense.stderr and "Traceback" not in nonsense.stderr


def test_build_help_is_generated_from_the_recipe():
    text = run("build", "--recipe", "pcbm", "--help").stdout
    assert "--lam" in text and "--residual" in text and "elastic-net strength" in text
    assert "Recipes:" in text and "pcbm" in text


def test_help_explains_the_commands():
    text = run("--help").stdout
    for command in ("build", "predict", "evaluate", "edit", "info"):
        assert command in text


# -- hostile inputs to predict / edit / evaluate (issue 10) -------------------------------------------
@pytest.fixture(scope="module")
def small_bundle(world):
    out = world / "hostile_bundle"
    if not out.exists():
        run("build", "--backbone", f"local-dir:{world / 'model'}", "--data", str(world / "data"), "--concepts",
            str(world / "concepts.txt"), "--template", "a photo of {}.", "--out", str(out), "--device", "cpu", "--quiet")
    return out


def test_predict_reports_every_failed_image_with_its_reason(world, small_bundle):
    from hostile import animated, saved, thin_png
    from PIL import Image

    odd = world / "odd"
    odd.mkdir(exist_ok=True)
    (odd / "tall.png").write_bytes(thin_png(1, 300_000))
    (odd / "icon.ico").write_bytes(saved(Image.new("RGB", (16, 16)), "ICO"))
    (odd / "moving.gif").write_bytes(animated("GIF"))
    if not (odd / "pipe.png").exists():
        os.mkfifo(odd / "pipe.png")
    good = str(world / "data" / "green" / "001.png")
    images = [good, str(odd), "/dev/zero", str(odd / "pipe.png"), str(odd / "tall.png"), str(odd / "icon.ico"),
              str(odd / "moving.gif"), str(odd / "missing.png")]
    proc = run("predict", "--bundle", str(small_bundle), *images, "--json", "--device", "cpu", "--trust-backbone",
               check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    out = json.loads(proc.stdout)
    assert [r["image"] for r in out] == images  # every image, in order: none dropped
    assert "prediction" in out[0] and out[0]["notes"] == []
    reasons = [r.get("error", "") for r in out]
    assert "is a folder, not an image file" in reasons[1]
    assert "is not a regular file" in reasons[2] and "is not a regular file" in reasons[3]
    assert "aspect ratio of 300,000:1; the limit is 20:1" in reasons[4]
    assert "is an ICO file; this tool reads PNG, JPEG, WebP, BMP, TIFF or GIF" in reasons[5]
    assert "prediction" in out[6] and "only the first one is used" in out[6]["notes"][0]
    assert "No such file" in reasons[7]
    assert not any("again" in r for r in reasons)

    text = run("predict", "--bundle", str(small_bundle), str(odd / "moving.gif"), str(odd), "--device", "cpu",
               "--trust-backbone", check=False)
    assert text.returncode == 1 and "moving.gif:" in text.stdout
    assert "note: 'moving.gif' has several frames" in text.stderr and "is a folder" in text.stderr


def test_a_bad_intervention_file_is_one_clear_error(world, small_bundle, capsys):
    # In-process through cli.main (the same code path, without a 5 s interpreter start per case).
    from cbm_core.cli import main

    (world / "iv").mkdir(exist_ok=True)
    (world / "iv" / "text.json").write_text("switch off the water")
    (world / "iv" / "latin1.json").write_bytes(b'{"format": "cbm-intervention", "x": "\xe9"}')
    (world / "iv" / "unknown.json").write_text(json.dumps(
        {"format": "cbm-intervention", "version": 1, "changes": [{"op": "ablate", "concept": "purple wing"}]}))
    image = str(world / "data" / "green" / "001.png")
    for name, message in (("missing.json", "does not exist"), ("", "is a folder"), ("text.json", "not valid JSON"),
                          ("latin1.json", "not UTF-8"), ("unknown.json", "does not fit this model.*purple wing")):
        path = str(world / "iv" / name) if name else str(world / "iv")
        code = main(["predict", "--bundle", str(small_bundle), image, "--intervention", path, "--device", "cpu",
                     "--trust-backbone"])
        out, err = capsys.readouterr()
        assert code == 2 and re.search(message, err), (name, err)
        assert err.count("\n") == 1 and path in err and not out


def test_edit_matches_concepts_in_any_case_and_info_shows_the_edited_models_metrics(world, small_bundle):
    typo = run("edit", "--bundle", str(small_bundle), "--prune", "whte background", "--out", str(world / "typo"),
               check=False)
    assert typo.returncode == 2 and "Did you mean 'white background'?" in typo.stderr
    out = world / "edited_case"
    run("edit", "--bundle", str(small_bundle), "--prune", "White Background", "--prune", "ROUND SHAPE",
        "--out", str(out), "--overwrite")
    before = json.loads(run("info", "--bundle", str(small_bundle)).stdout)
    info = json.loads(run("info", "--bundle", str(out)).stdout)
    assert info["edit_log"][-1]["concepts"] == ["white background", "round shape"]
    for key in ("nec", "nonzero_fraction", "concepts_used"):  # the stored metrics agree with the weights
        assert info["metrics"][key] == info[key]
    assert "val_accuracy" not in info["metrics"]  # measured on the old weights: moved to the log entry
    assert info["edit_log"][-1]["metrics_before"]["val_accuracy"] == before["metrics"]["val_accuracy"]
    again = run("edit", "--bundle", str(small_bundle), "--prune", "red", "--out", str(out), check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_csv_paths_outside_the_manifests_folder_need_a_flag(world, small_bundle):
    sub = world / "csv"
    sub.mkdir(exist_ok=True)
    rows = ["path,label"] + [f"../data/{c}/00{i}.png,{c}" for c in ("blue", "green", "red") for i in range(2)]
    (sub / "m.csv").write_text("\n".join(rows) + "\n")
    args = ["evaluate", "--bundle", str(small_bundle), "--data", str(sub / "m.csv"), "--device", "cpu", "--quiet",
            "--trust-backbone"]
    refused = run(*args, check=False)
    assert refused.returncode == 2 and "line 2: path '../data/blue/000.png' leads outside" in refused.stderr
    assert "--allow-outside-paths" in refused.stderr and "Traceback" not in refused.stderr
    assert json.loads(run(*args, "--allow-outside-paths").stdout)["n"] == 6


def test_a_map_method_the_tower_lacks_is_one_clear_error(world, small_bundle, capsys):
    from cbm_core.cli import main

    image = str(world / "data" / "green" / "001.png")
    code = main(["report", "--bundle", str(small_bundle), image, "--saliency", "gradcam-fine", "--out",
                 str(world / "fine.html"), "--device", "cpu", "--trust-backbone"])
    out, err = capsys.readouterr()
    assert code == 2 and "--saliency gradcam-fine: this model's vit tower offers dense, dense-surgery, gradcam" in err
    assert err.count("\n") == 1 and not (world / "fine.html").exists()


def test_evaluate_matches_classes_by_name_in_any_order(tmp_path):
    """The demo bundle on Toy Birds exported as a CSV: the CSV's classes come sorted, the model's in its own order;
    labels are matched by name, so the accuracy is the model's (not a refusal, nor a shuffled-label score). A
    class the model does not know is refused by name."""
    import csv

    from cbm_core import load_bundle
    from cbm_core.demo.paths import DEMO_BUNDLE
    from cbm_core.demo.world import export

    manifest = export(tmp_path / "birds", {"test": 40}, size=96)
    model = load_bundle(DEMO_BUNDLE)
    classes = sorted({r["label"] for r in csv.DictReader(manifest.open())})
    assert tuple(classes) != tuple(model.classes)  # the same names, another order
    out = json.loads(run("evaluate", "--bundle", str(DEMO_BUNDLE), "--data", str(manifest), "--device", "cpu",
                         "--quiet").stdout)
    assert out["accuracy"] > 0.6, out  # chance is 1/8
    edit_csv_cell(manifest, 0, "label", "dodo")
    bad = run("evaluate", "--bundle", str(DEMO_BUNDLE), "--data", str(manifest), "--device", "cpu", "--quiet",
              check=False)
    assert bad.returncode == 2 and "'dodo'" in bad.stderr and "Traceback" not in bad.stderr
