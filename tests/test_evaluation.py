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
