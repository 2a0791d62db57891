"""The bench report as Markdown tables (``tipo bench`` without ``--json``)."""

from __future__ import annotations

from typing import Any


def format_report(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"machine: {m['cpus']} cpus {m['machine']} ({m['flags']}), torch {m['torch']}, "
        f"{m['threads']} threads; read bandwidth {report['bandwidth_gb_s']:.1f} GB/s",
        f"checkpoint: {report['checkpoint']} ({report['parameters'] / 1e6:.0f}M weights read "
        f"per step); prompt {report['prompt_len']} tokens, {report['new_tokens']} new, EOS off",
    ]
    sections = [
        ("speed", None, _speed_line,
         ["engine", "weights", "batch", "tokens/s", "ms/step", "TTFT s", "load s",
          "peak RSS MB", "× reference", "of bandwidth bound", "outside weight GEMMs"]),
        ("quality", None, _quality_line,
         ["engine", "format", "vs", "max logit err", "mean logit err", "mean KL",
          "top-1 agreement", "greedy agreement"]),
        ("pipeline", None, _pipeline_line,
         ["request mode", "variants", "s", "tokens", "tokens/s", "passes/request",
          "tokens/request", "forward passes/token", "met length targets"]),
        ("retries", "format-aware noise model, same requests in both modes:", _retry_line,
         ["length", "mode", "passes/request", "new tokens/request", "prompt tokens/request",
          "met length targets"]),
    ]  # fmt: skip
    if report.get("headline"):
        lines += [
            "",
            "time to a finished prompt, seconds (whole requests; the reference path as "
            "headline.py explains; 16-variant reference cells from a fitted cost model):",
        ]
        lines += _headline_table(report["headline"])
    for key, title, line, columns in sections:
        if report.get(key):
            lines += ["", *([title] if title else [])]
            lines += [f"| {' | '.join(columns)} |", "|---" * len(columns) + "|"]
            lines += [line(row) for row in report[key]]
    if report.get("skipped"):
        lines += ["", "skipped:"]
        lines += [f"- {item['rows']} rows: {item['reason']}" for item in report["skipped"]]
    return "\n".join(lines)


def _headline_table(rows: list[dict[str, Any]]) -> list[str]:
    engines = list(rows[0]["seconds"])
    ours, others = engines[0], engines[1:]
    columns = ["request", "length", "variants", *engines, *(f"{ours} × {e}" for e in others),
               f"new tokens: {ours} / {engines[-1]}"]  # fmt: skip
    lines = [f"| {' | '.join(columns)} |", "|---" * len(columns) + "|"]
    for r in rows:
        times = [r["seconds"][e] for e in engines]
        ratios = [r["seconds"][e] / r["seconds"][ours] for e in others]
        counts = r.get("tokens", {})
        made = f"{counts.get(ours, '?')} / {counts.get(engines[-1], '?')}"
        lines.append(f"| {r['request']} | {r['length']} | {r['variants']} | "
                     + " | ".join(f"{t:.2f}" for t in times) + " | "
                     + " | ".join(f"{x:.2f}" for x in ratios) + f" | {made} |")  # fmt: skip
    return lines


def _speed_line(r: dict[str, Any]) -> str:
    head = f"| {r['engine']} | {r['weights']} | {r['batch']} |"
    if "error" in r:
        return f"{head} error: {r['error']} ||||||"
    outside = f"{r['outside_gemm']:.0%}" if "outside_gemm" in r else "—"
    return (
        f"{head} {r['tokens_per_s']:.1f} | {r['ms_per_token']:.1f} | {r['ttft_s']:.3f} | "
        f"{r['load_s']:.2f} | {r['peak_rss_mb']:.0f} | {r.get('x_reference', float('nan')):.2f} | "
        f"{r['of_bound']:.0%} | {outside} |"
    )


def _quality_line(r: dict[str, Any]) -> str:
    top1 = r.get("teacher_forced_agreement", r.get("top1_agreement", float("nan")))
    greedy = r.get("greedy_agreement", r.get("greedy_prefix", float("nan")))
    return (
        f"| {r['engine']} | {r['dtype']} | {r['reference']} | {r['max_abs_logit_error']:.4f} | "
        f"{r['mean_abs_logit_error']:.4f} | {r.get('mean_kl', float('nan')):.2e} | {top1:.1%} | "
        f"{greedy:.1%} |"
    )


def _pipeline_line(r: dict[str, Any]) -> str:
    return (
        f"| {r['mode']} | {r['variants']} | {r['seconds']:.1f} | {r['tokens']} | "
        f"{r['tokens_per_s']:.1f} | {r['passes_per_request']:.1f} | "
        f"{r['tokens_per_request']:.0f} | {r.get('forwards_per_token', float('nan')):.2f} | "
        f"{_met(r, r['variants'])} |"
    )


def _retry_line(r: dict[str, Any]) -> str:
    return (
        f"| {r['length']} | {r['mode']} | {r['passes_per_request']:.2f} | "
        f"{r['tokens_per_request']:.0f} | {r['prompt_tokens_per_request']:.0f} | "
        f"{_met(r, r['requests'])} |"
    )


def _met(r: dict[str, Any], requests: int) -> str:
    """How many requests met their length targets, of how many; and how many failed."""
    failed = f" ({r['failed']} failed)" if r.get("failed") else ""
    return f"{r['met_targets']}/{requests}{failed}"


__all__ = ["format_report"]
