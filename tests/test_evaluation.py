import torch

from cbm_core.core.concepts import ConceptBank
from cbm_core.analysis.baselines import random_concept_baseline
from cbm_core.core.concept_layer import TextCosine
from cbm_core.analysis.evaluation import confusion_matrix, cooccurrence_warnings
from cbm_core.core.model import ConceptBottleneckModel, ConceptStats


def test_confusion_matrix_counts(hand_model):
    model, train = hand_model
    pred = model.predict(train[:30])
    labels = pred.clone()
    labels[:4] = (labels[:4] + 1) % 3
    cm = confusion_matrix(model, train[:30], labels)
    assert cm.sum() == 30 and cm.trace() == 26
    assert cm[labels[0], pred[0]] >= 1


def test_cooccurrence_flags_concepts_that_always_fire_together():
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    v[1] = torch.nn.functional.normalize(v[0] + 1e-3 * torch.randn(8, generator=g), dim=0)  # a near copy of concept 0
    names = ("a", "a twin", "b")
    emb = torch.nn.functional.normalize(torch.randn(100, 8, generator=g), dim=1)
    model = ConceptBottleneckModel("x:random", ConceptBank(names), TextCosine(v), ("p", "q"),
                                   ConceptStats.from_scores(names, emb @ v.T), torch.zeros(2, 3), torch.zeros(2))
    table = cooccurrence_warnings(model, emb, 0.95)
    assert list(table.itertuples(index=False, name=None))[0][:2] == ("a", "a twin") and len(table) == 1
    for block in (1, 2):  # a block of rows at a time (bounded memory for 100,000 latents): the same pairs, once
        assert table.equals(cooccurrence_warnings(model, emb, 0.95, block=block))


def test_random_baseline_is_worse_than_informative_concepts():
    g = torch.Generator().manual_seed(1)
    D, C = 16, 4
    centers = torch.nn.functional.normalize(torch.randn(C, D, generator=g), dim=1)
    y = torch.arange(400) % C
    emb = torch.nn.functional.normalize(centers[y] + 0.9 * torch.randn(400, D, generator=g), dim=1)
    names = tuple(f"c{k}" for k in range(C))
    from cbm_core.recipes import PCBM

    model = PCBM(concepts=ConceptBank(names), concept_vectors=centers, classes=[f"k{c}" for c in range(C)],
                 backbone_spec="x:random", lam=1e-3).fit(emb[:300], y[:300]).model_
    out = random_concept_baseline(model, emb[:300], y[:300], emb[300:], y[300:], seed=0)
    assert out["model_accuracy"] > out["random_accuracy"] + 0.1
    assert set(out) == {"random_accuracy", "random_nec", "model_accuracy", "model_nec"}


def test_worst_group_counts_every_image_and_a_blank_group_cell_is_a_group(tmp_path):
    """Groups are counted in one pass (many one-image groups stay quick) with the same numbers as a mask per
    group; a CSV row whose group cell is blank joins "(no group)" instead of dropping worst-group accuracy for
    every image."""
    from cbm_core.analysis.evaluation import evaluate
    from cbm_core.data.datasets import ImageDataset
    from cbm_core.data.features import NO_GROUP, _with_metadata
    from cbm_core.demo.paths import DEMO_BUNDLE, load_demo_features
    from cbm_core import load_bundle
    from helpers import edit_csv_cell

    model, test = load_bundle(DEMO_BUNDLE), load_demo_features("test")
    m = evaluate(model, test.embeddings, test.labels, test.groups)
    correct = (model.predict(test.embeddings) == test.labels).float()
    for g, value in m.per_group.items():
        assert value == float(correct[torch.tensor([x == g for x in test.groups])].mean()), g
    singles = evaluate(model, test.embeddings, test.labels, tuple(str(i) for i in range(len(test.labels))))
    assert len(singles.per_group) == len(test.labels) and set(singles.per_group.values()) <= {0.0, 1.0}

    from cbm_core.demo.world import export

    manifest = export(tmp_path, {"test": 6}, size=32)
    edit_csv_cell(manifest, 2, "group", "")
    data = ImageDataset.from_csv(manifest)
    feats = _with_metadata(data, torch.zeros(6, 4), torch.zeros(6, dtype=torch.long), torch.arange(6), ())
    assert feats.groups is not None and feats.groups[2] == NO_GROUP and feats.groups.count(NO_GROUP) == 1
