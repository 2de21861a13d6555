// Presenter keys on the Defend page (app/views.py: presenter_keys). A lecturer at a projector drives the
// page from the keyboard (or a clicker that sends keys), so each key presses the page's own button: the
// same callback runs as for a click, and a key can never do what the page does not offer (a disabled
// button stays disabled). Buttons are found by their Streamlit key (the st-key-<key> class).

const KEYS = [
  ["Space", "Start / Pause the run; Play / Stop the replay of a finished run"],
  ["\u2192 / \u2190", "next / previous frame of the timeline"],
  ["S", "one step of Algorithm 1 (a paused run)"],
  ["R", "reset: stop the run and go back to M_R"],
  ["F", "full screen for the Fig. 5 panels (F or Esc to leave)"],
  ["P", "presentation style on / off"],
  ["?", "this list (Esc closes it)"],
];

// Where the key goes to the page; a field, a list or editable text keeps its own keys.
function typing(target) {
  if (!target || !target.closest) return false;
  return !!target.closest("input, textarea, select, [contenteditable=''], [contenteditable='true']");
}

// The first of `keys` whose button is on the page and enabled. While a rerun swaps one button for another
// (Pause for Play), the old one stays on screen marked stale for a moment, and a click on it is lost: a
// button of this rerun goes first.
function click(keys) {
  const enabled = keys.flatMap((key) => [...document.querySelectorAll(`.st-key-${key} button`)]).filter((b) => !b.disabled);
  const button = enabled.find((b) => !b.closest("[data-stale='true']")) || enabled[0];
  if (button) button.click();
  return !!button;
}

function toggleStyle() {
  const box = document.querySelector(".st-key-w_style input[type='checkbox']");
  if (box && !box.disabled) box.click();
  return !!box;
}

function fullScreen() {
  if (document.fullscreenElement) {
    document.exitFullscreen();
    return true;
  }
  const plot = document.querySelector(".js-plotly-plot");
  if (!plot) return false;
  const box = plot.closest("[data-testid='stElementContainer']") || plot.parentElement;
  box.classList.add("advft-fullscreen");
  box.requestFullscreen().catch(() => box.classList.remove("advft-fullscreen"));
  return true;
}

function overlay() {
  let el = document.getElementById("advft-keys-overlay");
  if (!el) {
    el = document.createElement("div");
    el.id = "advft-keys-overlay";
    el.setAttribute("role", "dialog");
    el.setAttribute("aria-label", "Presenter keys");
    const rows = KEYS.map(([k, what]) => `<tr><th><kbd>${k}</kbd></th><td>${what}</td></tr>`).join("");
    el.innerHTML = `<div class="advft-keys-box"><h3>Presenter keys</h3><table>${rows}</table>` +
      `<p>Keys do nothing while you type in a field.</p></div>`;
    el.addEventListener("click", () => el.remove());
    document.body.appendChild(el);
  } else {
    el.remove();
  }
  return true;
}

function onKey(event) {
  // Only where the page has put its keys on screen (another page of the app keeps its keys).
  if (!document.querySelector(".advft-keys-hint")) return;
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat || typing(event.target)) return;
  const role = event.target && event.target.getAttribute ? event.target.getAttribute("role") : null;
  let done = false;
  switch (event.key) {
    case " ":
      done = click(["t_pause", "t_play", "replay_stop", "replay_play", "t_start"]);
      break;
    case "ArrowRight":
    case "ArrowLeft":
      if (role === "slider") return; // the focused timeline moves by itself
      done = click([event.key === "ArrowRight" ? "frame_next" : "frame_previous"]);
      break;
    case "s":
    case "S":
      done = click(["t_step"]);
      break;
    case "r":
    case "R":
      done = click(["t_reset"]);
      break;
    case "f":
    case "F":
      done = fullScreen();
      break;
    case "p":
    case "P":
      done = toggleStyle();
      break;
    case "?":
      done = overlay();
      break;
    case "Escape": {
      const el = document.getElementById("advft-keys-overlay");
      if (el) {
        el.remove();
        done = true;
      }
      break;
    }
    default:
      return;
  }
  if (done) {
    // Not also the browser's (Space scrolls, a focused button clicks again) nor Streamlit's own (R reruns).
    event.preventDefault();
    event.stopImmediatePropagation();
  }
}

function onFullScreenChange() {
  if (!document.fullscreenElement) {
    document.querySelectorAll(".advft-fullscreen").forEach((el) => el.classList.remove("advft-fullscreen"));
  }
  const plot = document.querySelector(".js-plotly-plot");
  if (plot && window.Plotly) window.Plotly.Plots.resize(plot);
}

export default function ({ parentElement }) {
  // One listener per page, however often Streamlit reruns this component; capture phase, so that the page
  // answers the key before the focused element or Streamlit's own shortcuts do.
  if (!window.__advftKeys) {
    window.__advftKeys = true;
    window.addEventListener("keydown", onKey, true);
    document.addEventListener("fullscreenchange", onFullScreenChange);
  }
  // The hint appears once the keys work (and says where they do: onKey looks for it).
  if (!parentElement.querySelector(".advft-keys-hint")) {
    const hint = document.createElement("div");
    hint.className = "advft-keys-hint";
    hint.innerHTML = "Presenter keys: press <kbd>?</kbd>";
    parentElement.appendChild(hint);
  }
}
