"""Attack: steal a model through its API and see what AdvFT (or DP / AM) does to the thief.

The controller of the Attack page. It wires
    the attack and target controls                 -> a core AttackConfig / DefenceConfig,
    the session's Task (app/tasks.py; it runs in   <- Launch / Protect & attack / sweeps / Stop,
    the worker process, app/worker.py)
    the task's partial AttackResult                -> the live progress line and accuracy-vs-queries curve,
    finished rows (the `table` command's schema)   -> a table in the layout of the paper's Tables 2-3,
                                                      formatted by the same code as `table`.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import streamlit as st

from app import session, views
from app.jobs import ABANDON_AFTER_S
from app.tasks import (DEFENCE_LABELS, TOY_ATTACK, TOY_EPOCHS, TOY_MARGINS, TOY_MINUTES, Task, TaskSpec, attack_targets,
                       clear_results, load_results)
from core import figures
from core.advft import PRESETS
from core.attacks import ATTACKS, AttackConfig, DefenceConfig, example_images, thief_view_problem
from core.errors import UserError
from core.knobs import BY_NAME
from core.experiments import AM_SIMPLIFIED, column_names, formatted, with_before
from core.victims import committed_victims, victim_path

LIVE_REFRESH_S = 0.5


# ---------------------------------------------------------------- figures


def last_score(curve: list[dict]) -> str:
    """The surrogate's latest accuracy and when it was measured (KnockoffNets scores only after training)."""
    if not curve:
        return "surrogate not scored yet"
    return f"surrogate {100 * curve[-1]['acc']:.1f}% right (scored at {curve[-1]['queries']:,} queries)"


def protection(r: dict) -> str:
    """How a saved attack's target was protected, in a few words."""
    said = "unprotected" if r.get("m") is None else f"AdvFT m = {r['m']:g}"
    if r.get("defence", "none") != "none":
        said += f" + {DEFENCE_LABELS.get(r['defence'], r['defence'])}"
    return said


def result_label(i: int, r: dict) -> str:
    return f"{i}. {r['target']} · {protection(r)} · {r['attack']} ({r['labels']}), Q {r['q']:,}"


def thief_view(results: list[dict], style: str, export: views.Export) -> None:
    """What the thief got, for two saved attacks side by side (by default the latest on an unprotected target
    and the latest on a protected one): both models' confusions, test digits with both answers, and the
    accuracy per class. Drawn from the saved results, so it opens later without the models."""
    saved = [(i, r, thief_view_problem(r["thief_view"])) for i, r in enumerate(results, 1)
             if r.get("thief_view") is not None]
    viewable = {result_label(i, r): r for i, r, problem in saved if problem is None}
    unreadable = len(saved) - len(viewable)
    if not viewable:
        return
    st.subheader("The thief's view: what the stolen copy answers")
    views.explain("On the ID test set (what honest users ask): the attacked model's answers (the API's) beside "
                  "the surrogate's (the thief's). Against the unprotected original the thief copies the diagonal; against AdvFT's M_F it does not, "
                  "while the attacked model's own answers stay the same. Captions under the digits: "
                  "<em>the API's answer · the thief's answer</em>, a wrong one in red with ✗.")
    if unreadable:
        st.caption(f"{unreadable} saved result(s) carry a thief's view this page cannot read; they are left out.")
    labels = list(viewable)
    plain_ones = [k for k in labels if viewable[k].get("m") is None and viewable[k].get("defence", "none") == "none"]
    left_default = plain_ones[-1] if plain_ones else labels[0]
    others = [k for k in labels if k != left_default]
    right_default = next((k for k in reversed(others) if k not in plain_ones), others[-1] if others else left_default)
    # A widget keeps its value across reruns: when a new result arrives (an attack just finished), both sides
    # go back to their defaults, so the new result shows; a result gone (cleared) is no choice any more.
    arrived = set(labels) - set(st.session_state.get("tv_known", labels))
    for side, default in (("left", left_default), ("right", right_default)):
        if arrived or st.session_state.get(f"tv_{side}") not in labels:
            st.session_state[f"tv_{side}"] = default
    st.session_state.tv_known = labels
    columns = st.columns(2)
    chosen = {}
    for col, side in zip(columns, ("left", "right")):
        label = col.selectbox(f"Attack on the {side}", labels, key=f"tv_{side}")  # its value set above
        view = viewable[label]["thief_view"]
        chosen[side] = (label, view, protection(viewable[label]))
        confusions = figures.thief_confusions(view, style)
        answers = figures.thief_answers(view, example_images(view), style)
        st.session_state.attack_charts = {**st.session_state.get("attack_charts", {}),
                                          f"thief's view {side} (confusions)": confusions,
                                          f"thief's view {side} (answers)": answers}
        with col:
            views.chart(confusions, f"tv_confusions_{side}", export.config(f"thief-confusions-{side}"))
            views.chart(answers, f"tv_answers_{side}", export.config(f"thief-answers-{side}"))
    per_class = figures.thief_per_class({f"{side} ({said})": view for side, (_, view, said) in chosen.items()}, style)
    st.session_state.attack_charts = {**st.session_state.get("attack_charts", {}), "thief's view (per class)": per_class}
    views.chart(per_class, "tv_per_class", export.config("thief-per-class"))
    st.caption(f"Per class: the share of the test images each thief answers right (bars) and each attacked model "
               f"(markers). Left: {views.plain(chosen['left'][0])}. Right: {views.plain(chosen['right'][0])}.")


# ---------------------------------------------------------------- the page


ui = session.ui_state()
export = views.export_settings()
st.title("Attack: steal the model through its API")
views.explain("A thief sends out-of-distribution images (KnockoffNets: natural photos; DFME: generator samples) "
              "to the model's API and trains a surrogate on the answers. Against the original M_R the surrogate "
              "gets close to the victim; against AdvFT's M_F the answers to OOD queries are distorted, so the "
              "surrogate learns the wrong thing, while honest users (ID inputs) see the same model.")
data_dir = str(session.data_dir())
dev = str(session.device())
holder = session.session_task()
results_dir = session.runs_dir() / ".attacks"  # finished attacks and sweeps, shared by every tab (app/tasks.py)
results, sweeps, damaged = load_results(results_dir)

all_targets = attack_targets(session.runs_dir())
# The target this tab chose, if it is gone (a run deleted in another tab): the selectbox would quietly fall
# back to its default, and Launch would attack a model nobody chose.
vanished = st.session_state.get("a_target")
vanished = vanished if vanished is not None and vanished not in all_targets else None
# Plain widgets, not a form: "Protect & attack" below must use the settings on screen, not the last submitted.
with st.container(border=True):
    c1, c2, c3 = st.columns(3)
    names = list(all_targets)
    default = next((i for i, n in enumerate(names) if n.endswith("mnist_lenet2d")), 0)
    label = c1.selectbox("Target", names, index=default, key="a_target",
                         help="The original victim, or the protected model of any AdvFT run (Defend page).")
    defence = c1.radio("API defence", list(DEFENCE_LABELS), format_func=DEFENCE_LABELS.get, horizontal=True,
                       key="a_defence", help="Poisoning added behind the API; combine with an AdvFT target freely. "
                                             + AM_SIMPLIFIED)
    attack_name = c2.radio("Attack", list(ATTACKS), horizontal=True, key="a_attack",
                           format_func=lambda a: ATTACKS[a].label)
    labels = c2.radio("Answers", ("soft", "hard"), horizontal=True, key="a_labels",
                      help="soft: probabilities; hard: top-1 label only")
    queries = c3.number_input("Query budget Q", min_value=1, max_value=50_000_000, value=20_000, step=1000,
                              key="a_queries", help="KnockoffNets: 20k in about a minute on a CPU; DFME needs ~1M")
    seed = c3.number_input("Seed", min_value=0, max_value=10_000, value=0, key="a_seed")
    with st.expander("More attack settings"):
        d1, d2, d3 = st.columns(3)
        sampling = d1.radio("KnockoffNets sampling", ("random", "adaptive"), horizontal=True, key="a_sampling")
        surrogate = d2.radio("Surrogate", ("full", "same"), horizontal=True, key="a_surrogate",
                             format_func={"full": "full-width (strong thief)", "same": "same as victim"}.get)
        rounds = d2.number_input("KnockoffNets rounds", min_value=1, max_value=20, value=1, key="a_rounds",
                                 help="Query, then train, this many times: the points of the accuracy-vs-queries "
                                      "curve. 1 is KnockoffNets' own procedure (query the whole budget, then "
                                      "train) and the strongest thief; more rounds draw the curve in between.")
        beta = d3.number_input("DP beta", 0.05, 1.0, 0.7, 0.05, key="a_beta")
        gamma = d3.number_input("DP gamma", 0.05, 5.0, 0.5, 0.05, key="a_gamma")
        threshold = d1.slider("AM threshold (max softmax)", 0.05, 0.95, 0.5, 0.05, key="a_threshold")
    launch = st.button("Launch attack", type="primary", icon=":material/play_arrow:", key="a_launch")

task = holder.job
view = task.view() if task else None
busy = bool(view and view.active)

with st.container(border=True):
    st.markdown("**Protect, then attack.** Run AdvFT with the lecture settings and a margin of your choice on a "
                "committed victim, then attack the result with the settings above: no need to leave the page.")
    p1, p2, p3, p4 = st.columns([2, 2, 1, 1])
    victims = committed_victims()
    lecture_victim = PRESETS["lecture"]["victim"]  # MNIST, the victim of the benchmarks and the README
    p_victim = p1.selectbox("Victim", victims, key="p_victim",
                            index=victims.index(lecture_victim) if lecture_victim in victims else 0)
    p_margin = p2.select_slider("Margin m", options=[0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 50.0, 100.0],
                                value=10.0, key="p_margin",
                                help=BY_NAME["margin"].help)
    p_epochs = p3.number_input("Epochs N", 1, 50, 6, key="p_epochs")
    protect = p4.button("Protect & attack", disabled=busy, key="p_go", icon=":material/shield:")

s1, s2, s3 = st.columns([1, 1, 2])
fig4 = s1.button(f"Fig. 4 (toy): Acc_MS vs N · ~{TOY_MINUTES['epochs']} min", disabled=busy, key="s_epochs",
                 help=f"KnockoffNets {TOY_ATTACK['queries']:,} queries after AdvFT epochs {TOY_EPOCHS} (lecture preset); "
                      f"about {TOY_MINUTES['epochs']} min on a 2-core CPU")
msweep = s2.button(f"Margin sweep (toy) · ~{TOY_MINUTES['margins']} min", disabled=busy, key="s_margins",
                   help=f"m in {TOY_MARGINS}; lecture preset; KnockoffNets {TOY_ATTACK['queries']:,} queries; "
                        f"about {TOY_MINUTES['margins']} min on a 2-core CPU")


def start(title: str, kind: str, **args) -> None:
    spec = TaskSpec(title, kind, args, data_dir, dev)
    holder.replace(Task(spec, session.job_slots(), ABANDON_AFTER_S, results_dir).start())
    st.rerun()


try:
    attack_cfg = AttackConfig(attack=attack_name, labels=labels, queries=int(queries), seed=int(seed),
                              sampling=sampling, surrogate=surrogate, rounds=int(rounds)).validate()
    defence_cfg = DefenceConfig(name=defence, dp_beta=float(beta), dp_gamma=float(gamma),
                                am_threshold=float(threshold), seed=int(seed)).validate()
except (UserError, ValueError) as e:
    attack_cfg = defence_cfg = None
    if launch or protect:
        st.error(str(e))
runs = str(session.runs_dir())
if vanished:
    st.error(f"The target **{views.plain(vanished)}** no longer exists (deleted, perhaps in another tab); nothing "
             "was launched. Choose a target above.")
if launch and attack_cfg and not busy and not vanished:
    start(f"{attack_name} on {label}", "attack", target=all_targets[label], attack=asdict(attack_cfg),
          defence=asdict(defence_cfg))
elif launch and busy:
    st.warning("An attack is already running in this session: stop it first.")
if protect and attack_cfg:
    start(f"AdvFT m={p_margin:g} then {attack_name}", "attack", target={"victim": str(victim_path(p_victim))},
          attack=asdict(attack_cfg), defence=asdict(DefenceConfig()),
          advft={"margin": float(p_margin), "epochs": int(p_epochs)}, runs_dir=runs)
if fig4:
    start("Fig. 4 sweep", "sweep", kind="epochs", victim=p_victim, runs_dir=runs)
if msweep:
    start("margin sweep", "sweep", kind="margins", victim=p_victim, runs_dir=runs)


@st.fragment(run_every=LIVE_REFRESH_S if busy else None)
def live() -> None:
    task = holder.job
    if task is None:
        st.info("Choose a target and an attack, then launch it. Results collect in the table below.")
        return
    v = task.view()
    head = st.columns([4, 1])
    if v.state == "queued":
        head[0].info(f"**{v.title}**: waiting for a free slot, place {v.place} in line "
                     "(one job at a time on a CPU machine).")
    elif v.state == "running":
        p = v.progress or {}
        title = views.plain(v.title)
        if not p:  # the task is loading its target and data; the attack has not reported yet
            head[0].progress(0.0, text=f"**{title}**: loading the target and the transfer data · "
                                       f"{time.time() - v.started:.0f} s")
        else:
            text = f"**{title}**: {p['phase']}"
            if p.get("queries"):
                text += f" · {p['queries']:,} / {p['budget']:,} queries · " + last_score(p.get("curve") or [])
            # the pace counts from the first report: loading the data is not the attack's pace
            first = st.session_state.setdefault("a_first_report", {}).setdefault(v.started, (time.time(), p["done"]))
            head[0].progress(min(1.0, p["done"]), text=text + " · " + views.time_left(first, p["done"], time.time()))
    elif v.state == "failed":
        head[0].error(f"**{views.plain(v.title)}** failed: {views.plain(v.message)}")
    elif v.state == "stopped":
        head[0].info(f"**{views.plain(v.title)}**: {views.plain(v.message or 'stopped')}")
    else:
        head[0].success(f"**{views.plain(v.title)}**: {v.state} in {time.time() - v.started:.0f} s")
    if v.active and head[1].button("Stop", key="a_stop", icon=":material/stop:"):
        task.stop()
    if v.notes:
        st.caption(views.plain(" · ".join(v.notes[-4:])))
    finished_curves = {f"{r['target']} ({r['defence']}, {r['attack']})": r["curve"] for r in results[-5:] if r.get("curve")}
    if v.active and v.progress and v.progress.get("curve"):
        finished_curves = {**finished_curves, "running": v.progress["curve"]}
    if finished_curves:
        curve = figures.attack_curve(finished_curves, ui.style)
        st.session_state.attack_charts = {**st.session_state.get("attack_charts", {}), "accuracy vs queries": curve}
        views.chart(curve, "attack_curve", export.config("attack-curve"))
        views.explain("Surrogate accuracy on the ID test set as the thief spends queries. A working defence keeps "
                      "this line low while the table's Acc_MF (what honest users get) stays at Acc_MR."
                      + (" A one-round KnockoffNets attack (its own procedure: query everything, then train) "
                         "has two points, the untrained surrogate and the final one; choose more rounds under "
                         "*More attack settings* to see the curve in between." if all(
                             len(c) <= 2 for c in finished_curves.values()) else ""))
    if not v.active and busy:
        st.rerun()  # the task ended: its saved result joins the table, the buttons come back on


with st.container(key="live_attack"):  # assets/style/app.css: a live area never fades while it reruns
    live()

st.subheader("Results, in the layout of the paper's Tables 2-3")
if damaged:
    st.warning(views.plain(f"Left out {len(damaged)} saved file(s) under '{results_dir}' that are not results of this "
                           f"app: {'; '.join(damaged[:3])}{' …' if len(damaged) > 3 else ''}. Clear results removes them."))
if results:
    rows = with_before(results)  # Acc_MS before: the same attack on an unprotected target, when you ran it
    heads, cells = formatted(rows)
    # status beside the names: at the end of a wide table it scrolled out of sight
    table = [{"target": r["target"], "attack": f"{r['attack']} ({r['labels']})", "status": r["status"],
              **dict(zip(column_names(heads), c))} for r, c in zip(rows, cells)]
    st.dataframe(table, hide_index=True, column_config={"target": st.column_config.TextColumn(pinned=True)})
    views.explain("Acc_MS best: the surrogate's best test accuracy over training (the paper's protocol), final: at its "
                  "end; before: the same attack on the unprotected original (when you ran it). Acc_MF and KL: what "
                  "honest users asking for soft answers get from the target behind its defence, against the original "
                  "M_R, whatever labels the thief asked for. AM is a simplified version of adaptive misinformation "
                  "(see the API defence's help).")
    views.metrics_downloads("attack-results", [{k: v for k, v in r.items() if k not in ("curve", "thief_view")} for r in rows],
                            "attack_results")
    if st.button("Clear results", key="a_clear", help="Deletes the saved results of every tab"):
        clear_results(results_dir)
        st.rerun()
    thief_view(results, ui.style, export)
else:
    st.caption("No finished attacks yet.")
    if damaged and st.button("Clear results", key="a_clear_damaged", help="Deletes the saved results of every tab"):
        clear_results(results_dir)
        st.rerun()

for i, report in enumerate(sweeps[-3:]):
    if not report["rows"]:
        continue
    x = "epoch" if "epoch" in report["rows"][0] else "margin"
    st.subheader("Fig. 4 (toy, KnockoffNets; the paper's uses DFME): surrogate accuracy vs AdvFT epochs N"
                 if x == "epoch" else
                 "Margin sweep (toy): protection vs fidelity")
    sweep = figures.sweep_figure(report, x, ui.style)
    st.session_state.attack_charts = {**st.session_state.get("attack_charts", {}), f"sweep {i + 1} ({x})": sweep}
    views.chart(sweep, f"sweep_{i}", export.config(f"sweep-{x}"))
    st.dataframe(report["rows"], hide_index=True)

views.server_export(st.session_state.get("attack_charts", {}), export, "attack", key="attack")
