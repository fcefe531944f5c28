// Evaluate's correlated concept pairs (ui/correlation_panel.py): the threshold slider filters the
// pairs here, in the browser. The messages say what the Python page used to say for each threshold.

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

export default function (component) {
  const { data, parentElement } = component;
  const root = parentElement.querySelector(".pairs");
  if (!root.__pairs) root.__pairs = { threshold: data.threshold };  // kept across the page's reruns
  const state = root.__pairs;
  root.replaceChildren();

  const control = el("label", "control");
  const slider = el("input");
  slider.type = "range"; slider.min = data.lowest; slider.max = data.highest; slider.step = 0.01;
  slider.value = state.threshold;
  slider.setAttribute("aria-label", "Correlation above");
  const value = el("span", "value");
  control.append(el("span", "label", "Correlation above"), slider, value);
  const message = el("div", "message");
  const table = el("table");
  const body = el("tbody");
  const head = el("thead");
  const headRow = el("tr");
  for (const name of ["concept", "concept", "correlation"]) headRow.append(el("th", "", name));
  head.append(headRow);
  table.append(head, body);
  const scroller = el("div", "scroller");
  scroller.append(table);
  root.append(control, message, scroller);

  function render() {
    const t = state.threshold;
    value.textContent = t.toFixed(2);
    const shown = data.pairs.filter(([, , c]) => Math.abs(c) > t);
    root.dataset.rows = String(shown.length);
    if (!shown.length) {
      message.className = "message ok";
      message.textContent = `No pair of concepts is correlated above ${t.toFixed(2)} on these images.`;
      scroller.hidden = true;
      return;
    }
    message.className = "message warn";
    message.textContent = `${shown.length} pair${shown.length === 1 ? "" : "s"} always fire together (correlation above `
      + `${t.toFixed(2)}): their weights are interchangeable, and switching one off may not mean what you think.`;
    scroller.hidden = false;
    body.replaceChildren(...shown.map(([a, b, c]) => {
      const row = el("tr");
      row.append(el("td", "", a), el("td", "", b), el("td", "num", c.toFixed(3)));
      return row;
    }));
  }

  slider.addEventListener("input", () => { state.threshold = Number(slider.value); render(); });
  render();
}
