// A small drawing canvas for "probe your own input" (app/views.py: probe_input). Light ink on black, as
// MNIST's digits are; when a stroke ends, the drawing goes to Python as a PNG data URL (a few kB), where
// core.probe.as_digit lays it out as MNIST does. Built once per element: Streamlit calls this function
// again on every rerun (the live area reruns several times a second), which must not wipe the drawing.

const SIZE = 224;   // pixels of the canvas; 8x MNIST's 28
const BRUSH = 18;   // ~2.3 px at 28x28 once the digit is scaled into MNIST's 20x20 box, like MNIST's strokes

export default function (component) {
  const { parentElement, setStateValue } = component;
  if (parentElement.querySelector(":scope > div.advft-draw")) return;
  const box = document.createElement("div");
  box.className = "advft-draw";
  box.innerHTML =
    `<canvas width="${SIZE}" height="${SIZE}" aria-label="Drawing area: draw a digit with the mouse or a finger"></canvas>` +
    `<button type="button">Clear</button>`;
  parentElement.appendChild(box);
  const canvas = box.querySelector("canvas");
  const ctx = canvas.getContext("2d");
  const blank = () => {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, SIZE, SIZE);
  };
  blank();
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = BRUSH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";

  let drawing = false;
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [((e.clientX - r.left) * SIZE) / r.width, ((e.clientY - r.top) * SIZE) / r.height];
  };
  canvas.addEventListener("pointerdown", (e) => {
    drawing = true;
    canvas.setPointerCapture(e.pointerId);
    const [x, y] = at(e);
    ctx.beginPath();
    ctx.moveTo(x, y);
    ctx.lineTo(x + 0.01, y); // a click leaves a dot
    ctx.stroke();
    e.preventDefault();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    const [x, y] = at(e);
    ctx.lineTo(x, y);
    ctx.stroke();
    e.preventDefault();
  });
  const end = () => {
    if (!drawing) return;
    drawing = false;
    setStateValue("drawing", canvas.toDataURL("image/png"));
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  box.querySelector("button").addEventListener("click", () => {
    blank();
    setStateValue("drawing", null);
  });
}
