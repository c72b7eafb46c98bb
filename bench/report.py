"""results.md from the results dict (the JSON holds everything; the Markdown is for reading)."""
from __future__ import annotations


def _num(x, unit: str = "") -> str:
    if x is None:
        return "–"
    text = f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return f"{text} {unit}".strip()


def one_line(value: dict) -> str:
    if "ratio" in value:
        return (f"{value['ratio']:.2f}x ({_num(value['ours']['value'])} vs {_num(value['baseline']['value'])} "
                f"{value['unit']}; target {value['target']}: {'met' if value['met'] else 'MISSED'})")
    b, t = value["breakdown_s"], value["throughput"]
    return (f"iteration {b['total_s']:.1f}s, generation {_num(t['generation_tokens_per_s'])} tokens/s, update "
            f"{_num(t['update_pairs_per_s'])} pairs/s")


def _busy(m: dict) -> str:
    start, end = m["load_avg_start"][0], m.get("load_avg_end", [float("nan")])[0]
    during = m.get("load_avg_after_section", {})
    busy = max([start, end, *during.values()]) > 0.5 * m["cpu_count"]
    return (f"1-min load average {start} at the start, {end} at the end"
            + (f" ({', '.join(f'{k} {v}' for k, v in during.items())} after each section)" if during else "")
            + f" on {m['cpu_count']} cores (this bench itself adds 1): "
            + ("**the machine was busy** (other processes shared the cores): absolute timings are inflated and noisy; "
               "each ratio is measured within this process with its sides interleaved, fastest round kept"
               if busy else "the machine was mostly idle"))


def _ratio_rows(ratios: dict) -> list[str]:
    rows = ["| key | comparison | ours | baseline | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for key, r in ratios.items():
        rows.append(f"| {key} | {r['name']} | {_num(r['ours']['value'], r['unit'])} ({r['ours']['seconds']:.2f} s) | "
                    f"{_num(r['baseline']['value'], r['unit'])} ({r['baseline']['seconds']:.2f} s) | "
                    f"**{r['ratio']:.2f}x** | {r['target']} | {'yes' if r['met'] else '**no**'} |")
    return rows


def _stage_table(r: dict) -> list[str]:
    o, b = r["ours"]["stages_s"], r["baseline"]["stages_s"]
    rows = ["| stage (s) | ours | TRL | TRL / ours |", "|---|---|---|---|"]
    small = 0.01 * r["ours"]["seconds"]  # a ratio of two near-zero stages means nothing
    rows += [f"| {k[:-2]} | {_num(o[k])} | {_num(b[k])} | {_num(b[k] / o[k]) + 'x' if o[k] > small else '–'} |"
             for k in o]
    rows.append(f"| total | {_num(r['ours']['seconds'])} | {_num(r['baseline']['seconds'])} | "
                f"{_num(r['baseline']['seconds'] / r['ours']['seconds'])}x |")
    rows.append(f"| pairs / updates / generated tokens | {r['ours']['pairs']} / {r['ours']['updates']} / "
                f"{r['ours']['generated_tokens']} | {r['baseline']['pairs']} / {r['baseline']['updates']} / "
                f"{r['baseline']['generated_tokens']} | |")
    return rows


def _profile(prof: dict) -> list[str]:
    rows = []
    for side, entries in prof.items():
        rows += [f"cProfile, {side} (top by own time):", "", "| function | calls | own s | cumulative s |",
                 "|---|---|---|---|"]
        rows += [f"| `{e['function']}` | {e['calls']} | {e['tottime_s']} | {e['cumtime_s']} |" for e in entries]
        rows.append("")
    return rows


def _workload_tables(w: dict) -> list[str]:
    names = list(w)
    metrics = list(dict.fromkeys(k for n in names for k in w[n]["throughput"]))
    rows = ["| throughput | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    rows += [f"| {k} | " + " | ".join(_num(w[n]["throughput"].get(k)) for n in names) + " |" for k in metrics]
    rows += ["", "| iteration wall time, s (share) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k in w[names[0]]["breakdown_s"]:
        cells = []
        for n in names:
            b = w[n]["breakdown_s"]
            cells.append(f"{_num(b[k])} ({100 * b[k] / b['total_s']:.0f}%)" if k != "total_s" else f"**{_num(b[k])}**")
        rows.append(f"| {k[:-2]} | " + " | ".join(cells) + " |")
    rows.append("| peak RSS, MB | " + " | ".join(_num(w[n]["peak_rss_mb"]) for n in names) + " |")
    rows.append("")
    for n in names:
        c = w[n]["counts"]
        rows.append(f"- **{n}** ({w[n]['policy']}, {w[n]['policy_params_m']:.1f}M params): {w[n]['note']}. "
                    f"{c['prompts']} prompts x {c['samples_per_prompt']} samples = {c['generated_sequences']} seqs "
                    f"({c['generated_tokens']} tokens), {c['labels']} labels, {c['pairs']} pairs, "
                    f"{c['update_steps']} update steps; arms {c['arms']}; building models took {w[n]['load_s']:.0f} s "
                    "(not in the iteration)." + (f" Sources never chosen: {w[n]['unused_sources']}."
                                                 if w[n]["unused_sources"] else ""))
    return rows


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# Bench results", "",
             f"`python -m bench{' --quick' if res['settings']['quick'] else ''}`: {m['cpu_count']} CPUs "
             f"({m['processor']}), torch {m['torch']}, transformers {m['transformers']}, TRL {m['trl']}, "
             f"{m['torch_threads']} torch thread; wall time **{res['wall_s']:.0f} s**, peak RSS "
             f"{res['peak_rss_mb']:.0f} MB (getrusage; per section: the kernel's high-water mark reset before each, "
             "so it includes models earlier sections still cache).", "", _busy(m) + ".", ""]
    if res["ratios"]:
        lines += ["## Side-by-side ratios (each measured in this run, same model, data, batch and steps)", ""]
        lines += _ratio_rows(res["ratios"]) + [""]
        for key, r in res["ratios"].items():
            lines.append(f"- **{key}**: {r['setup']}; peak RSS {r['peak_rss_mb']:.0f} MB.")
        lines.append("")
        for key, r in res["ratios"].items():
            if "stages_s" in r["ours"]:
                lines += [f"### {key}: where the time goes", ""] + _stage_table(r) + [
                    "", "update: ours = pipeline.online.update (policy forward, backward, optimizer step); TRL = its "
                    "policy forward and backward (its optimizer step and Trainer bookkeeping are in rest).", ""]
            if "profile" in r:
                lines += [f"### {key}: target missed, profiles", ""] + _profile(r["profile"])
    if res["workloads"]:
        lines += ["## Online iteration: per-stage throughput and wall time", ""] + _workload_tables(res["workloads"])
    return "\n".join(lines) + "\n"
