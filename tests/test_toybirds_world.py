"""The Toy Birds world: deterministic, masks that agree with attributes, the specified group balance."""
from collections import Counter

import numpy as np

from cbm_core.data.datasets import ImageDataset
from cbm_core.demo.world import (ATTRIBUTES, CONCEPTS, SPECIES, concept_mask, export, generate, render,
                                 sample_bird)


def test_generation_is_deterministic_per_seed():
    a_birds, a = generate("train", 6, seed=3)
    b_birds, b = generate("train", 6, seed=3)
    _, c = generate("train", 6, seed=4)
    assert np.array_equal(a, b) and a_birds == b_birds
    assert not np.array_equal(a, c)


def test_vocabulary_and_species():
    assert len(CONCEPTS) >= 24 and len(SPECIES) >= 8
    # species overlap: every species shares its colours with another species
    for sp in SPECIES:
        twins = [o for o in SPECIES if o is not sp and all(o.typical[k] == sp.typical[k] for k in ("crown", "breast", "wing"))]
        assert twins, sp.name


def test_attributes_are_typical_85_to_95_percent():
    birds = [sample_bird(0, i, "train") for i in range(4000)]
    for sp_idx, sp in enumerate(SPECIES):
        mine = [b for b in birds if b.species == sp_idx]
        for attr in ATTRIBUTES:
            share = np.mean([b.attributes[attr] == sp.typical[attr] for b in mine])
            assert 0.80 <= share <= 0.97, (sp.name, attr, share)


def test_masks_agree_with_attributes():
    for i in range(40):
        bird = sample_bird(0, i, "test")
        _, masks = render(bird, 96)
        labels = bird.concept_labels()
        assert masks["crest"].any() == (bird.attributes["crest"] == "crest")
        for part in ("beak", "tail", "wing", "breast", "crown", "legs", "eye"):
            assert masks[part].any(), (i, part)
        assert masks["background"].mean() > 0.5
        # a long tail / long legs / long beak covers more pixels than a short one of the same bird
        for attr, long_value, short_value in (("tail", "long", "short"), ("legs", "long", "short"), ("beak", "long", "short")):
            if bird.attributes[attr] == long_value:
                from dataclasses import replace
                short = replace(bird, attributes={**bird.attributes, attr: short_value})
                assert masks[attr].sum() > render(short, 96)[1][attr].sum()
        for concept, present in labels.items():
            m = concept_mask(masks, concept)
            if present and m is not None:
                assert m.any(), (i, concept)


def test_group_balance_per_split():
    train = Counter(sample_bird(0, i, "train").group for i in range(4000))
    for group in ("waterbird", "landbird"):
        own = train[f"{group}_on_{'water' if group == 'waterbird' else 'land'}"]
        other = train[f"{group}_on_{'land' if group == 'waterbird' else 'water'}"]
        assert 0.93 <= own / (own + other) <= 0.97
    for split in ("val", "test"):
        counts = Counter(sample_bird(0, i, split).group for i in range(1600))
        assert len(counts) == 4 and set(counts.values()) == {400}
        species = Counter(sample_bird(0, i, split).species for i in range(1600))
        assert set(species.values()) == {200}


def test_export_is_a_generic_csv_dataset(tmp_path):
    manifest = export(tmp_path / "tb", {"train": 16, "test": 8}, size=64)
    ds = ImageDataset.from_csv(manifest, split="test")
    assert len(ds) == 8 and set(CONCEPTS) <= set(ds.concept_names)
    assert all(r.group and r.group.count("_on_") == 1 for r in ds.records)
    assert len(ImageDataset.from_csv(manifest, split="train").classes) == 8
