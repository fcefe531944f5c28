// The Intervene page's live panel: concept toggles and sliders on the left, the prediction on the
// right, recomputed here in the browser on every move from a HeadSlice (cbm_core/head_slice.py):
//     logits = base + weight @ z        z = 0 when off, z_grid interpolated when set
// so a move never waits for the server. Each finished change is sent to Python (state "edit"),
// which records it in the undo history and sends back the new slice; "ack" says which edit the
// data already includes, so a reply that is older than the latest move does not undo it.

const TOP_CLASSES = 6;
const TOP_CONTRIBUTIONS = 6;
const COMMIT_PAUSE_MS = 250;
const AFTER_PAINT_MS = 50;  // sending re-renders Streamlit's page: let the new numbers paint first

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function zAt(grid, pct) {  // the same interpolation as HeadSlice.z_at / ConceptStats.values_at
  const p = Math.min(Math.max(pct, 0), 100);
  const j = Math.min(Math.floor(p), 99);
  return grid[j] + (p - j) * (grid[j + 1] - grid[j]);
}

function currentZ(data, touched, i) {
  const setting = touched[data.concepts[i]];
  if (!setting) return data.z[i];
  if (setting.off) return 0;
  if (setting.percentile !== undefined && setting.percentile !== null) return zAt(data.z_grid[i], setting.percentile);
  return data.z_original[i];
}

function softmax(logits) {
  const top = Math.max(...logits);
  const e = logits.map((v) => Math.exp(v - top));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

function argmax(values) {
  let best = 0;
  values.forEach((v, i) => { if (v > values[best]) best = i; });
  return best;
}

function pct(p) { return `${(100 * p).toFixed(1)}%`; }

export default function (component) {
  const { data, setStateValue, parentElement } = component;
  const root = parentElement.querySelector(".live");
  if (!root.__live) {
    root.__live = { seq: data.ack || 0, touched: {}, signature: null, rows: [] };
  }
  const live = root.__live;
  live.data = data;
  live.send = setStateValue;
  const pending = live.waiting || live.seq > (data.ack || 0);
  if (!pending) live.touched = {};

  const controls = root.querySelector(".controls");
  const signature = data.concepts.join("\u0001");
  if (signature !== live.signature) {
    live.signature = signature;
    controls.replaceChildren();
    live.rows = data.concepts.map((name, i) => {
      const row = el("div", "row");
      const label = el("span", "name", name);
      const toggle = el("input");
      toggle.type = "checkbox";
      toggle.setAttribute("role", "switch");
      toggle.setAttribute("aria-label", `${name} on`);
      const slider = el("input");
      slider.type = "range";
      slider.min = 0; slider.max = 100; slider.step = 1;
      slider.setAttribute("aria-label", `${name} percentile`);
      const value = el("span", "value");
      row.append(label, toggle, slider, value);
      controls.append(row);
      toggle.addEventListener("change", () => {
        live.touched[name] = toggle.checked ? {} : { off: true };
        render(); commit(AFTER_PAINT_MS);
      });
      slider.addEventListener("input", () => {
        live.touched[name] = { percentile: Number(slider.value) };
        render();
      });
      // Arrow keys fire "change" on every press: wait for a pause, so that a run of presses is one
      // history entry and the server's rerun does not compete with the next press for the browser.
      slider.addEventListener("change", () => commit(COMMIT_PAUSE_MS));
      return { name, label, toggle, slider, value, index: i };
    });
  }
  render();
  root.dataset.synced = String(!pending);

  function commit(delay) {
    clearTimeout(live.timer);
    root.dataset.synced = "false";
    live.waiting = true;
    live.timer = setTimeout(() => {
      live.waiting = false;
      live.seq += 1;
      live.send("edit", { seq: live.seq, settings: live.touched });
    }, delay);
  }

  function render() {
    const d = live.data;
    const z = d.concepts.map((_, i) => currentZ(d, live.touched, i));
    const logits = d.base.map((b, c) => b + d.weight[c].reduce((acc, w, i) => acc + w * z[i], 0));
    const probs = softmax(logits);
    const pred = argmax(probs);
    const was = argmax(d.original_probs);

    for (const row of live.rows) {
      const i = row.index;
      const setting = live.touched[row.name];
      const off = setting ? Boolean(setting.off) : d.off[i];
      const shown = setting && setting.percentile !== undefined ? setting.percentile
        : setting && !setting.off ? d.percentiles_original[i] : d.percentiles[i];
      const changed = setting ? (setting.off || setting.percentile !== undefined) : d.changed[i];
      row.toggle.checked = !off;
      row.slider.disabled = off;
      row.slider.value = Math.round(shown);
      row.value.textContent = off ? "off" : `p${Math.round(shown)}`;
      row.label.classList.toggle("changed", changed);
    }

    const headline = root.querySelector(".headline");
    headline.replaceChildren();
    if (pred !== was) {
      headline.className = "headline moved";
      headline.append("Prediction changed: ", el("b", "", d.classes[was]), " → ", el("b", "predicted", d.classes[pred]));
    } else {
      headline.className = "headline";
      headline.append("Prediction: ", el("b", "predicted", d.classes[pred]));
    }

    const bars = root.querySelector(".probs");
    bars.replaceChildren();
    const order = probs.map((p, c) => c).sort((a, b) => probs[b] - probs[a]).slice(0, TOP_CLASSES);
    for (const c of order) {
      const change = probs[c] - d.original_probs[c];
      const row = el("div", "bar-row");
      row.dataset.cls = d.classes[c];
      const track = el("div", "track");
      const ghost = el("div", "ghost"); ghost.style.width = pct(d.original_probs[c]);
      const fill = el("div", "fill"); fill.style.width = pct(probs[c]);
      track.append(ghost, fill);
      const text = Math.abs(change) >= 0.0005 ? `${pct(probs[c])} (${change >= 0 ? "+" : "−"}${(100 * Math.abs(change)).toFixed(1)})`
        : pct(probs[c]);
      row.append(el("span", "cls", d.classes[c]), track, el("span", "prob", text));
      bars.append(row);
    }

    // A waterfall of the predicted class's score: everything else (bias, residual head, concepts not
    // on screen), then the largest on-screen contributions, each bar starting where the last ended.
    const contrib = root.querySelector(".contrib");
    contrib.replaceChildren(el("div", "subtitle", `Why ${d.classes[pred]}: its score (logit), step by step`));
    // Which way each concept points, as cbm_core.explain_text says it: present above its training
    // average (z > 0), absent below; a concept switched off sits at the average and counts nothing.
    const parts = d.concepts.map((name, i) => ({ name, value: d.weight[pred][i] * z[i],
      state: z[i] > 0 ? "present" : "absent" }))
      .filter((p) => p.value !== 0).sort((a, b) => Math.abs(b.value) - Math.abs(a.value)).slice(0, TOP_CONTRIBUTIONS);
    const rest = logits[pred] - parts.reduce((acc, p) => acc + p.value, 0);
    const steps = [{ name: "bias and all other concepts", value: rest, kind: "rest" }, ...parts,
      { name: `score of ${d.classes[pred]}`, value: logits[pred], kind: "total" }];
    let running = 0;
    for (const step of steps) {
      step.from = step.kind === "total" ? 0 : running;
      step.to = step.kind === "total" ? step.value : running + step.value;
      running = step.to;
    }
    const ends = steps.flatMap((s) => [s.from, s.to]);
    const low = Math.min(0, ...ends), high = Math.max(0, ...ends), span = Math.max(high - low, 1e-9);
    const at = (v) => `${(100 * (v - low)) / span}%`;
    for (const step of steps) {
      const row = el("div", "bar-row");
      const track = el("div", "track waterfall");
      const bar = el("div", `fill ${step.kind || (step.value >= 0 ? "pos" : "neg")} ${step.state || ""}`);
      bar.style.left = at(Math.min(step.from, step.to));
      bar.style.width = `${(100 * Math.abs(step.to - step.from)) / span}%`;
      const zero = el("div", "zero"); zero.style.left = at(0);
      track.append(zero, bar);
      const sign = step.kind === "total" ? "" : step.value >= 0 ? "+" : "−";
      const value = el("span", "prob", `${sign}${Math.abs(step.value).toFixed(2)}`);
      if (step.state) value.append(el("span", "state", step.state));
      row.append(el("span", `cls ${step.kind || ""}`, step.name), track, value);
      contrib.append(row);
    }
    root.dataset.probs = JSON.stringify(Object.fromEntries(d.classes.map((c, k) => [c, probs[k]])));
  }
}
