"""compare_recipes: matched sparsity, chosen on validation only, measured on test."""
import torch

from cbm_core.analysis.comparison import compare_recipes, stratified_split, with_head_at_nec
from cbm_core.core.concepts import ConceptBank
from cbm_core.data.features import FeatureSet
from cbm_core.recipes import RecipeInputs


def _features(n=240, d=32, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(c, d, generator=g), dim=1)
    y = torch.arange(n) % c
    x = torch.nn.functional.normalize(centres[y] + 0.8 * torch.randn(n, d, generator=g) / d ** 0.5, dim=1)
    groups = tuple("odd" if i % 2 else "even" for i in range(n))
    return FeatureSet(x, y, torch.arange(n), (), groups), centres


def _inputs(centres):
    g = torch.Generator().manual_seed(1)
    vectors = torch.nn.functional.normalize(torch.cat([centres, torch.randn(5, centres.shape[1], generator=g)]), dim=1)
    names = tuple(f"concept {k}" for k in range(len(vectors)))
    lookup = {n: v for n, v in zip(names, vectors)}
    text = lambda ns, templates: torch.stack([lookup.get(n, vectors[0]) for n in ns])  # noqa: E731
    return RecipeInputs(classes=("a", "b", "c"), backbone_spec="x:random", text=text, concepts=ConceptBank(names),
                        embed_dim=centres.shape[1])


def test_every_row_is_held_to_the_cap_and_nothing_is_chosen_on_test():
    feats, centres = _features()
    train, val, test = stratified_split(feats, seed=0)
    assert len(train) + len(val) + len(test) == len(feats)
    assert all(set(s.labels.tolist()) == {0, 1, 2} for s in (train, val, test))
    inputs = _inputs(centres)
    first = compare_recipes(train, val, test, inputs, ["pcbm"], nec=2, path_points=6)
    assert [r.recipe for r in first.rows] == ["pcbm", "linear-probe", "random-concepts", "zero-shot"]
    for row in first.rows:
        assert row.error is None and row.at_nec["nec"] <= 2 + 1e-9, (row.recipe, row.at_nec)
        assert row.path or row.recipe == "zero-shot"
    # shuffle the test labels: every choice (made on validation) stays, only the test numbers move
    shuffled = test.subset(torch.arange(len(test)))
    shuffled = FeatureSet(shuffled.embeddings, shuffled.labels[torch.randperm(len(test), generator=torch.Generator().manual_seed(3))],
                          shuffled.kept, (), shuffled.groups)
    second = compare_recipes(train, val, shuffled, inputs, ["pcbm"], nec=2, path_points=6)
    for a, b in zip(first.rows, second.rows):
        assert a.at_nec["how"] == b.at_nec["how"] and a.at_nec["val_accuracy"] == b.at_nec["val_accuracy"]
    assert first.rows[0].at_nec["accuracy"] != second.rows[0].at_nec["accuracy"]


def test_a_failing_recipe_is_reported_and_the_others_still_run():
    feats, centres = _features()
    train, val, test = stratified_split(feats)
    inputs = _inputs(centres)
    result = compare_recipes(train, val, test, RecipeInputs(**{**inputs.__dict__, "concepts": None}), ["pcbm"],
                             baselines=("zero-shot",))
    pcbm, zero = result.rows
    assert pcbm.error and "concept" in pcbm.error and zero.error is None
    assert pcbm.accuracy is None and pcbm.nec is None  # no number where there is none: strict JSON, no NaN
    import json

    json.dumps(result.to_dict(), allow_nan=False)


def test_nonsense_sparsity_and_a_class_with_no_readable_image_are_refused_clearly():
    import pytest

    from cbm_core.errors import RecipeError

    feats, centres = _features()
    train, val, test = stratified_split(feats)
    for nec in (float("nan"), -1, 0, float("inf")):
        with pytest.raises(RecipeError, match="at least 1"):
            compare_recipes(train, val, test, _inputs(centres), ["pcbm"], nec=nec)
    without_c = feats.subset((feats.labels != 2).nonzero().flatten())  # every image of class 'c' unreadable
    with pytest.raises(RecipeError, match="No readable image of class 'c'"):
        stratified_split(without_c, classes=("a", "b", "c"))


def test_truncating_a_head_keeps_at_most_n_concepts_per_class():
    feats, centres = _features()
    train, val, test = stratified_split(feats)
    from cbm_core.recipes import get_recipe

    model = get_recipe("pcbm").from_inputs(_inputs(centres), lam=1e-5).fit(train.embeddings, train.labels).model_
    assert model.sparsity()["nec"] > 2
    cut = with_head_at_nec(model, train, 2)
    assert ((cut.weight != 0).sum(1) <= 2).all() and cut.concept_layer is model.concept_layer


def test_the_best_label_free_recipe_is_never_one_that_needs_concept_labels():
    from cbm_core.demo.compare_recipes import best_label_free

    row = lambda name, acc, baseline=False: {"recipe": name, "baseline": baseline, "at_nec": {"accuracy": acc}}  # noqa: E731
    rows = [row("supervised", 0.95), row("pcbm", 0.91), row("lf-cbm", 0.90), row("linear-probe", 0.99, True),
            {**row("labo", 0.99), "error": "failed"}]
    assert best_label_free(rows)["recipe"] == "pcbm"
    assert best_label_free([row("supervised", 0.95)]) is None
