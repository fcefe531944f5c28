"""Training-free adaptation: a planted confounder found and masked, an under-activated concept
amplified, the `adapt` edit replayed and kept in a bundle, and the world's domain shift."""
import numpy as np
import pytest
import torch

from cbm_core import load_bundle, replay
from cbm_core.analysis.adaptation import AdaptationError, few_shot, propose_adaptation
from cbm_core.core.concept_layer import LinearProjection
from cbm_core.core.concepts import ConceptBank
from cbm_core.analysis.edits import adapt_concepts
from cbm_core.errors import ConceptError
from cbm_core.analysis.evaluation import evaluate
from cbm_core.core.model import ConceptBottleneckModel, ConceptStats

NAMES = ("red crown", "long beak", "purple cast", "striped wing")


def planted(n=400, seed=0, shifted=False):
    """Raw scores = embeddings (an identity layer). Class 0 shows 'red crown', class 1 'long beak';
    'purple cast' is noise at the source — but the shifted domain lights it up on every image (a
    mis-activated confounder, which the head links to class 1) and dims 'red crown' (under-activated)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    s = torch.randn(n, 4, generator=g) * 0.5
    s[:, 0] += 2.0 * (y == 0)
    s[:, 1] += 2.0 * (y == 1)
    if shifted:
        s[:, 2] += 2.5
        s[:, 0] *= 0.5
    return s, y


def planted_model():
    train, _ = planted(seed=1)
    weight = torch.tensor([[1.5, -1.5, -0.6, 0.0], [-1.5, 1.5, 0.6, 0.0]])
    return ConceptBottleneckModel(backbone_spec="toy", concepts=ConceptBank(NAMES),
                                  concept_layer=LinearProjection(torch.eye(4)), classes=("cardinal", "heron"),
                                  stats=ConceptStats.from_scores(NAMES, train), weight=weight, bias=torch.zeros(2),
                                  recipe={"name": "hand-built"})


def test_the_planted_confounder_is_masked_and_the_dimmed_concept_amplified():
    model = planted_model()
    target_pool, y_pool = planted(seed=2, shifted=True)
    target_test, y_test = planted(seed=3, shifted=True)
    source_val, y_sv = planted(seed=4)
    pick = few_shot(y_pool, 4, seed=0)
    assert len(pick) == 8 and torch.bincount(y_pool[pick]).tolist() == [4, 4]
    proposal = propose_adaptation(model, target_pool[pick], y_pool[pick], source_embeddings=source_val,
                                  source_labels=y_sv)
    assert proposal.edits[0].concept == "purple cast" and proposal.edits[0].action == "mask"
    assert proposal.edits[0].effect < 0, "the evidence: as activated on the target it pushes images off their class"
    assert proposal.edits[0].target_activation > proposal.edits[0].source_activation + 2
    # then a discriminative concept amplified; the evidence shows 'red crown' dimmed on the target
    assert proposal.amplify and set(proposal.amplify) <= {"red crown", "long beak"}
    assert all(f > 1 for f in proposal.amplify.values())
    red = proposal.candidates_frame().set_index("concept").loc["red crown"]
    assert red["target activation"] < red["source activation"]
    adapted = proposal.apply(model)
    before = evaluate(model, target_test, y_test).accuracy
    after = evaluate(adapted.model, target_test, y_test).accuracy
    assert before < 0.8 and after > before + 0.15
    assert evaluate(adapted.model, source_val, y_sv).accuracy >= evaluate(model, source_val, y_sv).accuracy
    entry = adapted.entry
    assert entry["op"] == "adapt" and entry["mask"] == ["purple cast"] and entry["n_per_class"] == {"cardinal": 4,
                                                                                                    "heron": 4}
    assert entry["evidence"]["purple cast"]["action"] == "mask"
    frame = proposal.to_frame()
    assert list(frame.concept) == [e.concept for e in proposal.edits]
    assert set(proposal.candidates_frame().concept) == set(NAMES[:3]), "every concept the head uses is a candidate"


def test_no_edit_that_costs_source_accuracy():
    model = planted_model()
    pool, y = planted(seed=2, shifted=True)
    source, ys = planted(seed=4)
    # a source domain where 'purple cast' is what tells the classes apart: masking it would cost there
    source[:, 2] = torch.where(ys == 1, 3.0, -3.0)
    source[:, :2] = 0.0
    proposal = propose_adaptation(model, pool[:16], y[:16], source_embeddings=source, source_labels=ys)
    assert "purple cast" not in proposal.mask
    with pytest.raises(AdaptationError, match="above 1"):
        propose_adaptation(model, pool[:16], y[:16], factors=(0.5,))
    with pytest.raises(AdaptationError, match="class indices"):
        propose_adaptation(model, pool[:4], torch.tensor([0, 1, 2, 0]))


def test_adapt_edit_replays_and_survives_a_bundle(tmp_path):
    model = planted_model()
    result = adapt_concepts(model, ["purple cast"], {"red crown": 2.0}, details={"n_images": 8})
    w = result.model.weight
    assert (w[:, 2] == 0).all() and torch.equal(w[:, 0], model.weight[:, 0] * 2) and torch.equal(w[:, 1], model.weight[:, 1])
    loaded = load_bundle(result.model.save(tmp_path / "adapted"))
    assert loaded.edit_log[-1]["op"] == "adapt" and loaded.edit_log[-1]["amplify"] == {"red crown": 2.0}
    replayed = replay(model, loaded.edit_log)
    assert torch.equal(replayed.weight, w) and replayed.edit_log[-1]["n_images"] == 8
    with pytest.raises(ConceptError, match="both masked and amplified"):
        adapt_concepts(model, ["red crown"], {"red crown": 2.0})
    with pytest.raises(ConceptError, match="positive finite"):
        adapt_concepts(model, [], {"red crown": float("inf")})
    with pytest.raises(ConceptError, match="malformed"):
        replay(model, [{"op": "adapt", "mask": "purple cast"}])


def test_the_shift_is_deterministic_per_seed_and_leaves_the_plain_world_alone():
    from cbm_core.demo.shifted import ShiftedToyBirds
    from cbm_core.demo.splits import ToyBirds
    from cbm_core.demo.world import SHIFTS, render, sample_bird

    bird = sample_bird(0, 5, "test")
    a, masks_a = render(bird, 64, "stain")
    b, _ = render(sample_bird(0, 5, "test"), 64, SHIFTS["stain"])
    plain, masks_plain = render(bird, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(plain))
    assert masks_a["body"].sum() < masks_plain["body"].sum(), "the shifted bird is drawn smaller"
    other, _ = render(sample_bird(1, 5, "test"), 64, "stain")
    assert not np.array_equal(np.asarray(a), np.asarray(other))
    assert ShiftedToyBirds("test", 8).fingerprint != ToyBirds("test", 8).fingerprint
    with pytest.raises(ValueError, match="Unknown shift"):
        ShiftedToyBirds("test", 8, shift="sepia")
