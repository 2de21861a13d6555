// Brings the page back when Streamlit's frontend loses its element tree (app/views.py: recover_from_frontend_errors).
//
// A fragment that reruns every 0.3 s (the Defend page's live area) can break Streamlit's own page in a busy
// browser: when the messages of two fragment runs are handled in one burst, the clean-up that ends the
// first run is applied after the second run's first elements have landed and removes them (it removes
// every element of that fragment not made by the first run), so the next element has no place to go
// ("Bad delta path index 1 (should be between [0, 0])", "Cannot set a node at a delta path"). React then
// unmounts the whole app: a blank page, for good, while the job trains on. Measured on a 2-core machine
// with a training run, a browser and two CPU hogs: 1 Pause in 10. Everything the page shows lives on the
// server or in the URL (a reloaded tab adopts its live job), so a reload puts the page back as it was.

const BROKEN = /Bad delta path index|Cannot set a node at a delta path/;
const RECENT = "advft-recovered-at";
const WINDOW_MS = 60_000;
const MAX_RELOADS = 3; // in WINDOW_MS; a page that breaks again at once is left as it is, its error visible

function recover(message) {
  if (!BROKEN.test(message || "")) return;
  const now = Date.now();
  let recent = [];
  try {
    recent = JSON.parse(sessionStorage.getItem(RECENT) || "[]").filter((t) => now - t < WINDOW_MS);
  } catch (e) {
    recent = [];
  }
  if (recent.length >= MAX_RELOADS) return;
  sessionStorage.setItem(RECENT, JSON.stringify([...recent, now]));
  console.warn(`AdvFT: Streamlit's page lost its elements (${message}); reloading it`);
  window.location.reload();
}

export default function () {
  if (window.__advftRecover) return; // once per page: every rerun calls this again
  window.__advftRecover = true;
  window.addEventListener("error", (e) => recover(e.message || (e.error && e.error.message)));
  window.addEventListener("unhandledrejection", (e) => recover(e.reason && (e.reason.message || String(e.reason))));
}
