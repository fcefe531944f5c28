"""A stranger's bundle that points its backbone at a local folder waits for the user's consent in the app."""
from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

from cbm_core import save_bundle
from cbm_core.backbone import export_local_dir, load_backbone
from conftest import TINY_VIT
from test_concept_layer import make_model  # a model over tiny-vit's 32-d embeddings

ROOT = Path(__file__).resolve().parent.parent


def test_a_bundle_with_a_local_backbone_is_loaded_only_after_confirmation(tmp_path, tiny_configs):
    torch.manual_seed(0)
    export_local_dir(load_backbone("tiny-vit:random", device="cpu").model, TINY_VIT, tmp_path / "model")
    model = make_model("linear")[0]
    spec = f"local-dir:{tmp_path / 'model'}"
    bundle = save_bundle(model.with_changes(backbone_spec=spec), tmp_path / "stranger")

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["bundle_path_input"] = str(bundle)  # typed into "Open another bundle"
    at.switch_page("pages/evaluate.py")  # any page: the sidebar is the same everywhere
    at.run()
    at.sidebar.button(key="open_path").click().run()
    assert not at.exception, at.exception
    warning = " ".join(w.value for w in at.sidebar.warning)
    assert spec in warning and "trust" in warning
    assert any("8 classes" in c.value for c in at.sidebar.caption)  # the demo is still the session's model

    at.sidebar.button(key="trust_backbone").click().run()
    assert not at.exception, at.exception
    assert not at.sidebar.warning and not at.error
    assert any("3 classes" in c.value for c in at.sidebar.caption)
    assert any(spec in c.value for c in at.sidebar.caption)
