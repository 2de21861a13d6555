// A Plotly chart that stays mounted across reruns (app/views.py: chart). st.plotly_chart hashes the figure
// into its element id, so every new figure remounts the chart: ~300 ms of DOM work per update on a
// 2-core CPU, which capped the live Fig. 5 at ~1.7 frames/s and an atlas slider move at ~0.5 s.
// Here Streamlit calls this function again with the new data on the same element, and Plotly.react
// redraws in place (~40 ms).

// plotly.js (the build of the installed plotly package, served by Streamlit's static serving) is loaded
// once per page, by whichever chart asks first.
function loadPlotly(src) {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!window.__advftPlotly) {
    window.__advftPlotly = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = () => resolve(window.Plotly);
      script.onerror = () => {
        window.__advftPlotly = null; // a later chart may try again
        reject(new Error(`plotly.js did not load from ${src}`));
      };
      document.head.appendChild(script);
    });
  }
  return window.__advftPlotly;
}

// What a fast update may change: the points of traces (same traces, same point counts), the text of
// annotations (subplot titles) and layout.meta (which frame the figure shows: core.figures.frame_meta).
// Everything else (layout, styles, a trace more or less) goes to Plotly.react.
function pointsOnly(before, after) {
  if (!before || before.data.length !== after.data.length) return false;
  const rest = (f) => JSON.stringify({
    layout: { ...f.layout, meta: null, annotations: (f.layout.annotations || []).map((a) => ({ ...a, text: "" })) },
    data: f.data.map((t) => ({ ...t, x: t.x && (t.x.bdata || t.x).length, y: t.y && (t.y.bdata || t.y).length })),
  });
  return rest(before) === rest(after);
}

// Configs that differ only in the downloaded file's name.
function sameConfig(a, b) {
  const strip = (c) => JSON.stringify({ ...c, toImageButtonOptions: { ...c.toImageButtonOptions, filename: "" } });
  return strip(a) === strip(b);
}

function sameArray(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

// Moves the points and retitles, without rebuilding the SVG of every point (Plotly.react takes ~100-200 ms
// for the ~3,000 points of the Fig. 5 panels on a 2-core CPU). Every trace goes in, changed or not:
// Plotly.animate drops from the drawing the traces of a panel it is not given (M_R's points vanished
// when only M_F's moved), even though they stay in the figure's data.
function movePoints(Plotly, gd, before, after) {
  const moved = after.data.some((t, i) => !sameArray(t.x, before.data[i].x) || !sameArray(t.y, before.data[i].y));
  const traces = after.data.map((_, i) => i);
  const data = after.data.map((t) => ({ x: t.x, y: t.y }));
  const titles = {};
  (after.layout.annotations || []).forEach((a, i) => {
    if (a.text !== before.layout.annotations[i].text) titles[`annotations[${i}].text`] = a.text;
  });
  const steps = [];
  if (moved) {
    steps.push(Plotly.animate(gd, { data, traces }, { transition: { duration: 0 }, frame: { duration: 0, redraw: false } }));
  }
  if (Object.keys(titles).length) steps.push(Plotly.relayout(gd, titles));
  // meta draws nothing: set once the points are drawn, so that it says what the chart shows
  return Promise.all(steps).then(() => { gd.layout.meta = after.layout.meta; });
}

export default function (component) {
  const { data, parentElement } = component;
  let gd = parentElement.querySelector(":scope > div.advft-chart");
  if (!gd) {
    gd = document.createElement("div");
    gd.className = "advft-chart";
    gd.style.width = "100%";
    parentElement.appendChild(gd);
    // Redrawn to its new width when the window (or the page's column) changes: a window resized, a lecturer
    // going full screen. Not Plotly's `responsive` config: that sizes the chart to its container's height,
    // and a Streamlit element's container has none of its own (the chart collapses to nothing).
    let width = Math.round(gd.getBoundingClientRect().width); // what the first draw takes
    new ResizeObserver(([entry]) => {
      const now = Math.round(entry.contentRect.width);
      if (now === width || !gd._fullLayout || !window.Plotly) return;
      width = now;
      window.Plotly.Plots.resize(gd);
    }).observe(gd);
  }
  if (gd.__spec === data.spec && gd.__config === data.config) return; // a rerun that changed nothing here
  gd.__spec = data.spec;
  gd.__config = data.config;
  loadPlotly(data.src)
    .then((Plotly) => {
      if (gd.__spec !== data.spec) return null; // a newer figure arrived meanwhile: it draws itself
      const figure = JSON.parse(data.spec); // Plotly takes it over (decodes arrays in place, adds defaults)
      const config = JSON.parse(data.config);
      // Compared with what was last drawn (not last sent: a figure replaced before drawing never was).
      const before = gd.__figure, configBefore = gd.__drawnConfig;
      gd.__figure = JSON.parse(data.spec); // as sent: what the next update is compared with
      gd.__drawnConfig = config;
      if (before && sameConfig(configBefore, config) && pointsOnly(before, figure)) {
        // The download button's file name follows the figure (e.g. the atlas cell): read when clicked.
        gd._context.toImageButtonOptions = config.toImageButtonOptions;
        return movePoints(Plotly, gd, before, figure);
      }
      return Plotly.react(gd, figure.data, figure.layout, config);
    })
    .catch((error) => {
      gd.textContent = `This chart could not be drawn: ${error.message}`;
    });
}
