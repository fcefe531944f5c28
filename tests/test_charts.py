"""The charts' layout helpers: what each bar says and where it is drawn (numbers from cbm_core)."""
import pandas as pd

from cbm_core.explain.wording import ABSENT_AGAINST, ABSENT_FOR, PRESENT_FOR
from cbm_core.recipes.elastic_net import PathPoint
from ui import charts


def test_the_lambda_path_marks_the_model_that_was_built():
    points = [PathPoint(lam, 0.9, acc, nz, nec) for lam, acc, nz, nec in
              [(1e-2, 0.80, 0.1, 1.0), (2e-3, 0.90, 0.2, 2.0), (1e-4, 0.91, 0.6, 5.0)]]
    fig = charts.lambda_path(points, chosen_nec=2.5, chosen_accuracy=0.905, chosen_lam=2e-3)
    path, chosen = fig.data
    assert list(path.x) == [1.0, 2.0, 5.0] and list(path.y) == [0.80, 0.90, 0.91]  # concepts per class
    assert (chosen.x[0], chosen.y[0], chosen.name) == (2.5, 0.905, "this model, λ=0.002")
    assert charts.lambda_path(points, 2.5, 0.905, None).data[1].name == "this model"


def test_contribution_bars_draw_and_say_each_direction():
    frame = pd.DataFrame({
        "concept": ["white breast", "water <background>", "forked tail"], "percentile": [99.0, 12.0, 61.0],
        "contribution": [3.0, 0.62, -0.18], "direction": [PRESENT_FOR, ABSENT_FOR, ABSENT_AGAINST],
        "sentence": ["a", "b", "c"]})
    html = charts.contribution_bars(frame, "Concepts behind 'azure finch'")
    assert 'class="cbm-bar for absent"' in html and 'class="cbm-bar against absent"' in html
    assert "water &lt;background&gt;" in html and "<background>" not in html  # names are text, never markup
    assert '<b>+0.62</b> <span class="cbm-dim">absent p12 · for</span>' in html
    # The zero line sits where 0 falls between the smallest (-0.18) and the largest (3.0) contribution.
    assert f'class="cbm-zero" style="left:{100 * 0.18 / 3.18:.2f}%"' in html


def test_a_waterfall_steps_from_the_bias_to_the_total():
    frame = pd.DataFrame({"label": ["bias", "white breast", "water background", "logit of azure finch"],
                          "value": [0.5, 3.0, -1.0, 2.5], "kind": ["bias", "concept", "concept", "total"]})
    html = charts.waterfall_bars(frame, {"white breast": PRESENT_FOR, "water background": ABSENT_AGAINST}, "Why")
    bars = [part.split('"')[0] for part in html.split('class="cbm-bar ')[1:]]
    assert bars == ["neutral", "for present", "against absent", "total"]
    # Running sums 0 -> 0.5 -> 3.5 -> 2.5 on an axis from 0 to 3.5: the water step spans 2.5 .. 3.5.
    assert 'class="cbm-bar against absent" style="left:71.43%;width:28.57%"' in html
    assert 'class="cbm-bar total" style="left:0.00%;width:71.43%"' in html


def test_nec_curves_draw_each_recipe_against_concepts_per_class():
    from types import SimpleNamespace

    path = [PathPoint(1e-2, 0.9, 0.80, 0.1, 1.0), PathPoint(1e-3, 0.9, 0.92, 0.4, 4.0)]
    rows = [SimpleNamespace(recipe="pcbm", baseline=False, path=path[::-1]),
            SimpleNamespace(recipe="random-concepts", baseline=True, path=path),
            SimpleNamespace(recipe="failed", baseline=False, path=[])]  # no path: no curve
    fig = charts.nec_curves(rows, nec=5.0)
    assert [t.name for t in fig.data] == ["pcbm", "random-concepts (baseline)"]
    assert list(fig.data[0].x) == [1.0, 4.0] and list(fig.data[0].y) == [0.80, 0.92]  # sorted by NEC
    assert fig.data[1].line.dash == "dash" and fig.layout.shapes[0].x0 == 5.0
