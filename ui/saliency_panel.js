// Inspect's saliency maps (ui/saliency_panel.py): the picture with each concept's map as a
// transparent layer over it. The opacity control lives here, in the browser: it sets one CSS
// variable, so every overlay follows in the same frame and nothing is sent to the server.

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

export default function (component) {
  const { data, parentElement } = component;
  const root = parentElement.querySelector(".saliency");
  if (!root.__saliency) root.__saliency = { opacity: data.opacity };  // kept across the page's reruns
  const state = root.__saliency;
  root.style.setProperty("--opacity", String(state.opacity));
  root.replaceChildren();

  const head = el("div", "head");
  const control = el("label", "control");
  const slider = el("input");
  slider.type = "range"; slider.min = 0; slider.max = 1; slider.step = 0.05; slider.value = state.opacity;
  slider.setAttribute("aria-label", "Overlay opacity");
  const shown = el("span", "value", `${Math.round(state.opacity * 100)}%`);
  slider.addEventListener("input", () => {
    state.opacity = Number(slider.value);
    root.style.setProperty("--opacity", slider.value);
    shown.textContent = `${Math.round(state.opacity * 100)}%`;
  });
  control.append(el("span", "label", "Overlay opacity"), slider, shown);

  const scale = el("div", "scale");
  const ramp = el("span", "ramp");
  ramp.style.background = data.ramp;
  scale.append(el("span", "end", "least like the concept"), ramp, el("span", "end", "most like it"));
  head.append(control, scale);

  const notes = el("div", "notes");
  notes.append(el("div", "", "Each map is scaled to its own range: it shows where a concept matches best in this "
    + "image, not how strongly. Maps of concepts that are absent (below their training average) are dimmed: their "
    + "brightest spot is only the least unlike place."));
  if (data.seen) {
    notes.append(el("div", "crop", "The model saw only the outlined centre square of this image (it crops "
      + "non-square pictures before it looks); the veiled sides played no part in the prediction."));
  }

  const grid = el("div", "grid");
  for (const map of data.maps) {
    const figure = el("figure", map.present ? "present" : "absent");
    const frame = el("div", "frame");
    frame.style.setProperty("--ratio", `${data.width} / ${data.height}`);
    frame.style.setProperty("--aspect", String(data.width / data.height));
    const picture = el("img", "picture");
    picture.src = data.picture; picture.alt = "";
    const layer = el("img", "heat");
    layer.src = map.layer; layer.alt = `where the model sees ${map.concept}`;
    frame.append(picture, layer);
    if (data.seen) {
      const [x, y, w, h] = data.seen;
      const box = el("div", "seen");
      Object.assign(box.style, { left: `${100 * x}%`, top: `${100 * y}%`, width: `${100 * w}%`, height: `${100 * h}%` });
      frame.append(box);
    }
    const caption = el("figcaption");
    caption.append(el("b", "", map.concept), el("span", "detail", map.caption));
    figure.append(frame, caption);
    grid.append(figure);
  }
  root.append(head, notes, grid);
}
