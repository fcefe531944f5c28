"""The contract every registered recipe keeps, parametrised over the registry: declared options
that check themselves, fit -> bundle v2 -> load -> explain -> intervene -> dense maps and
Grad-CAM -> edit -> evaluate, and a build from the command line."""
import io
import json

import pytest
import torch

from cbm_core import Intervention, Pipeline, evaluate, load_bundle, prune_concepts
from cbm_core.cli import main as cli_main
from cbm_core.core.concepts import ConceptBank
from cbm_core.data.datasets import ImageDataset
from cbm_core.data.features import extract_features
from cbm_core.errors import RecipeError
from cbm_core.recipes import NEEDS, RECIPES, RecipeInputs, get_recipe
from helpers import COLOURS, shape_image, write_class_folder

NAMES = sorted(RECIPES)
CONCEPTS = ("red", "blue", "green", "round shape", "white background", "small dot")
POOL = {c: (f"a {c} circle", f"something {c}", "a round shape", f"{c} paint", "a pale background")
        for c in COLOURS}
VOCABULARY = ("red", "blue", "green", "circle", "square", "background", "white", "dark", "bright", "paint",
              "dot", "round", "sky", "grass", "fire", "stone")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory, tiny_vit):
    root = write_class_folder(tmp_path_factory.mktemp("shapes"), per_class=12)
    data = ImageDataset.from_folder(root)
    feats = extract_features(tiny_vit, data, use_cache=False)
    return root, data, feats


def inputs_for(tiny_vit, data) -> RecipeInputs:
    return RecipeInputs(classes=data.classes, backbone_spec=tiny_vit.spec, text=tiny_vit.embed_prompts,
                        templates=("a photo of {}.",), concepts=ConceptBank(CONCEPTS), candidate_pool=POOL,
                        vocabulary=VOCABULARY, embed_dim=tiny_vit.embed_dim, concept_names=tuple(data.classes))


def concept_labels_for(cls, labels) -> dict:
    """For a recipe that learns from concept labels: 0/1 labels of the colour concepts (a shape's
    colour is its class)."""
    if "concept_labels" not in cls.needs:
        return {}
    return {"concept_labels": torch.nn.functional.one_hot(torch.as_tensor(labels), len(COLOURS)).float()}


@pytest.mark.parametrize("name", NAMES)
def test_declaration_is_complete_and_options_check_themselves(name):
    cls = get_recipe(name)
    assert cls.title and cls.summary and set(cls.needs) <= set(NEEDS)
    assert cls.check_params({}) == cls.defaults()
    for p in cls.params:
        assert p.help
        if p.type in (int, float) and p.low is not None:
            with pytest.raises(RecipeError, match=p.flag):
                cls.check_params({p.name: p.low - 1})
        if p.type is float:
            with pytest.raises(RecipeError, match="finite"):
                cls.check_params({p.name: float("nan")})
    with pytest.raises(RecipeError, match="no option"):
        cls.check_params({"no_such_option": 1})


@pytest.mark.parametrize("name", NAMES)
def test_fit_bundle_explain_intervene_saliency_edit_evaluate(name, shapes, tiny_vit, tmp_path):
    _, data, feats = shapes
    cls = get_recipe(name)
    est = cls.from_inputs(inputs_for(tiny_vit, data)).fit(feats.embeddings, feats.labels,
                                                           val_features=feats.embeddings, val_labels=feats.labels,
                                                           **concept_labels_for(cls, feats.labels))
    model = est.model_
    assert model.recipe["name"].startswith(name.split("-")[0]) and model.classes == data.classes
    exp = model.explain_features(feats.embeddings)
    assert torch.isfinite(exp.probs).all() and exp.probs.shape == (len(feats.labels), 3)

    loaded = load_bundle(model.save(tmp_path / "bundle"))
    assert json.loads((tmp_path / "bundle" / "manifest.json").read_text())["format_version"] == 2
    torch.testing.assert_close(loaded.explain_features(feats.embeddings).logits, exp.logits)

    concept = loaded.concepts.names[int(loaded.weight.abs().sum(0).argmax())]
    off = loaded.explain_features(feats.embeddings[:3], Intervention().ablate(concept))
    k = loaded.concepts.index(concept)
    torch.testing.assert_close(off.scores[:, k], loaded.stats.mean[k].expand(3))

    pipe = Pipeline(tiny_vit, loaded)
    buf = io.BytesIO()
    shape_image("red", 3).save(buf, format="PNG")
    enc = pipe.encode(buf.getvalue(), "red.png")
    for method in ("dense", "gradcam"):
        maps = pipe.saliency(enc, method, [concept], out_size=(20, 20))
        assert maps.shape == (1, 20, 20) and torch.isfinite(maps).all()

    pruned = prune_concepts(loaded, [concept]).model
    assert bool((pruned.weight[:, k] == 0).all())
    m = evaluate(pruned, feats.embeddings, feats.labels)
    assert 0.0 <= m.accuracy <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_the_cli_builds_every_recipe(name, shapes, tiny_vit, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    root, _, _ = shapes
    from cbm_core.backbone import export_local_dir
    from conftest import TINY_VIT

    export_local_dir(tiny_vit.model, TINY_VIT, tmp_path / "model")
    (tmp_path / "concepts.txt").write_text("\n".join(CONCEPTS))
    (tmp_path / "pool.tsv").write_text("".join(f"{c}\t{s}\n" for c, ss in POOL.items() for s in ss))
    (tmp_path / "vocabulary.txt").write_text("\n".join(VOCABULARY))
    cls = get_recipe(name)
    data = str(root)
    if "concept_labels" in cls.needs:  # a CSV manifest with a 0/1 column per colour concept
        rows = ["path,label," + ",".join(COLOURS)] + [
            f"{c}/{p.name},{c}," + ",".join(str(int(c == k)) for k in COLOURS)
            for c in COLOURS for p in sorted((root / c).glob("*.png"))]
        (root / "manifest.csv").write_text("\n".join(rows) + "\n")
        data = str(root / "manifest.csv")
    args = ["build", "--recipe", name, "--backbone", f"local-dir:{tmp_path / 'model'}", "--data", data,
            "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"]
    args += ["--concepts", str(tmp_path / "concepts.txt")] if "concepts" in cls.needs else []
    args += ["--pool", str(tmp_path / "pool.tsv")] if "candidate_pool" in cls.needs else []
    args += ["--vocabulary", str(tmp_path / "vocabulary.txt")] if "vocabulary" in cls.needs else []
    if cls.uses_text:
        args += ["--template", "a photo of {}."]
    assert cli_main(args) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["recipe"].startswith(name.split("-")[0]) and summary["n_train"] + summary["n_val"] == 36
    assert load_bundle(tmp_path / "out").recipe["name"] == summary["recipe"]


@pytest.mark.parametrize("name", [n for n in NAMES if get_recipe(n).streams])
def test_a_recipe_that_streams_fits_and_paths_from_a_source(name, shapes, tiny_vit):
    """``Recipe.streams`` (what ``build --stream`` offers) is kept: fit and path take a ``FeatureSource``.
    (That the streamed fit equals the in-memory one is checked per recipe in test_store.py.)"""
    from cbm_core.data.sources import TensorSource

    _, data, feats = shapes
    cls = get_recipe(name)
    source = TensorSource(feats.embeddings)
    est = cls.from_inputs(inputs_for(tiny_vit, data)).fit(source, feats.labels, val_features=feats.embeddings,
                                                           val_labels=feats.labels)
    probs = est.model_.explain_features(feats.embeddings).probs
    assert est.model_.classes == data.classes and torch.isfinite(probs).all()
    path = cls.from_inputs(inputs_for(tiny_vit, data)).path(source, feats.labels, feats.embeddings, feats.labels,
                                                             n_points=3)
    assert len(path) == 3 and all(p.val_accuracy is not None for p in path)
