"""Quality by default: the model the service hands a user who sends no hyperparameters, beside a
plain transformers loop's small grid on the same rows, and the service at the grid's best point.

    python bench/quality.py                                  # sst2, trec: 2,000 rows, 1 seed
    python bench/quality.py --cases sst2,agnews,trec,conll --seeds 3
    python bench/quality.py --cases conll --rows 2000        # NER: served span F1 vs job F1
    python bench/quality.py --cases sst2-800 --seeds 3       # the new user's 800 reviews

Per case, from the same rows (a seeded sample of the train split):
- plain loop grid: every learning rate x epochs point (batch 32), scored on the test rows;
- service, defaults: a job with no hyperparameters (or only what the case's user sends); the
  validation file is rows of the train split that are not training rows (10% as many), never
  the scored ones; a case whose user sends no validation file sends none;
- service at the grid's best point: the same job with that point's hyperparameters given;
- service search: a job with `{"search": {"trials": N}}` and nothing else (--search-trials,
  first seed only: it trains N models);
- for NER also the exact character-span F1 of the spans /predict returns with the default
  aggregation, beside the job's own seqeval entity F1 on the same sentences (there the
  validation file is the scored sentences, as the job's F1 must be measured on them).
Scores are medians over --seeds (--grid-seeds for the grid: a grid point's single seed is
one noisy draw, and the best of several such draws is an optimistic bar, never a lenient one).
Where the case's user fixes n_epochs, the defaults are held against the grid's best at that
many epochs (the service cannot train longer than asked), and the grid's overall best is
printed beside it. Run it alone on the machine: it trains dozens of models.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import train_conll
import train_sst2


@dataclass(frozen=True)
class Case:
    folder: str
    test_file: str
    ner: bool = False
    # Overrides of --rows and --test-rows, what the case's user sends as hyperparameters, and
    # whether they send a validation file.
    rows: int | None = None
    test_rows: int | None = None
    sent: tuple[tuple[str, Any], ...] = ()
    validation: bool = True

    @property
    def columns(self) -> tuple[str, ...]:
        return train_conll.COLUMNS if self.ner else train_sst2.COLUMNS


CASES = {"sst2": Case("sst2", "dev.jsonl"), "agnews": Case("agnews", "test.jsonl"),
         "trec": Case("trec", "test.jsonl"), "conll": Case("conll2003", "test.jsonl", ner=True),
         # The new user: 800 movie reviews, only n_epochs 1, no validation file, scored
         # on 300 held-out reviews.
         "sst2-800": Case("sst2", "dev.jsonl", rows=800, test_rows=300,
                          sent=(("n_epochs", 1),), validation=False),
         # The same rows and user, sending nothing at all.
         "sst2-800-auto": Case("sst2", "dev.jsonl", rows=800, test_rows=300, validation=False)}


def row_counts(case: Case, options: dict[str, Any]) -> tuple[int, int]:
    """Training and scored rows of a case, under a run's options (vars of its arguments)."""
    return case.rows or options["rows"], case.test_rows or options["test_rows"]


def split_rows(case: Case, args: argparse.Namespace) -> tuple[list[Any], list[Any], list[Any]]:
    """Training rows, validation rows (other train rows) and the scored test rows."""
    pool = common.read_jsonl(common.SHARED_DATA / case.folder / "train.jsonl")
    random.Random(0).shuffle(pool)
    rows, test_rows = row_counts(case, vars(args))
    n_val = max(20, rows // 10)
    test = common.read_jsonl(common.SHARED_DATA / case.folder / case.test_file, test_rows)
    return pool[:rows], pool[rows:rows + n_val], test


# ---------------------------------------------------------------- scoring


def gold_spans(tokens: list[str], tags: list[str]) -> set[tuple[int, int, str]]:
    """(start, end, type) of each IOB2 entity, in characters of ' '.join(tokens); a stray I-X
    starts an entity, as seqeval reads it."""
    spans: set[tuple[int, int, str]] = set()
    kind, begin, end, position = None, 0, 0, 0
    for token, tag in zip(tokens, tags, strict=True):
        if tag == "O" or tag.startswith("B-") or tag[2:] != kind:
            if kind:
                spans.add((begin, end, kind))
            kind, begin = (None if tag == "O" else tag[2:]), position
        end = position + len(token)
        position = end + 1
    if kind:
        spans.add((begin, end, kind))
    return spans


def exact_span_f1(rows: list[dict[str, Any]], outputs: list[list[dict[str, Any]]]) -> float:
    """F1 of (start, end, type) character spans over ' '.join(tokens), matched exactly."""
    gold = {(i, *span) for i, row in enumerate(rows)
            for span in gold_spans(row["tokens"], row["tags"])}
    served = {(i, e["start"], e["end"], e["entity_group"])
              for i, entities in enumerate(outputs) for e in entities}
    hits = len(gold & served)
    return 2 * hits / (len(gold) + len(served)) if gold or served else 0.0


def served_score(service: common.Service, model: str, case: Case,
                 test: list[dict[str, Any]]) -> dict[str, float]:
    if case.ner:
        texts = [" ".join(r["tokens"]) for r in test]
        outputs = service.predict(model, texts, train_conll.PREDICT_CHUNK)
        return {"served_span_f1": exact_span_f1(test, outputs)}
    outputs = service.predict(model, [r["text"] for r in test], train_sst2.PREDICT_CHUNK)
    return {"score": train_sst2.accuracy([ranked[0]["label"] for ranked in outputs], test)}


# ---------------------------------------------------------------- the two sides


def plain_point(case: Case, train: list[Any], test: list[Any], lr: float, epochs: int,
                seed: int, args: argparse.Namespace) -> float:
    point = argparse.Namespace(seed=seed, max_length=128, batch_size=32, learning_rate=lr,
                               epochs=epochs, warmup_ratio=common.WARMUP_RATIO,
                               weight_decay=common.WEIGHT_DECAY)
    if case.ner:
        return float(train_conll.baseline_run(train, test, None, point,
                                              args.grid_bf16)["test_entity_f1"])
    return float(train_sst2.baseline_run(train, test, point, args.grid_bf16)["dev_accuracy"])


def service_job(service: common.Service, ids: tuple[str, str], case: Case,
                hyperparameters: dict[str, Any], seed: int,
                test: list[dict[str, Any]]) -> dict[str, Any]:
    task = "token-classification" if case.ner else "text-classification"
    job = service.train(*ids, hyperparameters, seed=seed, task=task)
    result = {"job": job["id"], "wall_s": job["_wall_s"],
              "hyperparameters": job["hyperparameters"],
              **served_score(service, job["fine_tuned_model"], case, test)}
    if case.ner:
        result["score"] = result["job_entity_f1"] = job["metrics"]["entity_f1"]
    return result


def run_case(name: str, args: argparse.Namespace, known: Known) -> dict[str, Any]:
    case = CASES[name]
    train, validation, test = split_rows(case, args)
    print(f"\n== {name}: {len(train)} train rows, {len(validation)} validation rows, "
          f"{len(test)} scored rows", flush=True)
    seeds = list(range(args.seeds))
    grid = plain_grid(case, train, test, args, known)
    sent = dict(case.sent)
    # The bar: the grid's best point among those the user's own choices allow.
    allowed = [p for p in grid if sent.get("n_epochs") in (None, p[1])] or list(grid)
    best_lr, best_epochs = max(allowed, key=lambda point: statistics.median(grid[point]))
    overall = max(statistics.median(scores) for scores in grid.values())
    with common.running_service(args.url) as base:
        service = common.Service(base)
        val_rows = test if case.ner else validation
        ids = (service.upload_rows(f"{name}-train.jsonl", train, case.columns),
               service.upload_rows(f"{name}-validation.jsonl", val_rows, case.columns)
               if case.validation else None)
        defaults = [service_job(service, ids, case, sent, s, test) for s in seeds]
        print(f"service defaults {sent or ''}: {defaults}", flush=True)
        at_best = [] if args.skip_at_best else [
            service_job(service, ids, case, {"n_epochs": best_epochs, "learning_rate": best_lr,
                                             "batch_size": 32}, s, test) for s in seeds]
        print(f"service at lr {best_lr:g} x {best_epochs}: {at_best}", flush=True)
        search = [service_job(service, ids, case, {"search": {"trials": args.search_trials}},
                              seeds[0], test)] if args.search_trials else []
        print(f"service search, {args.search_trials} trials: {search}", flush=True)
    return {"grid": {f"{lr:g}x{ep}": scores for (lr, ep), scores in grid.items()},
            "best_point": {"learning_rate": best_lr, "n_epochs": best_epochs},
            "plain_best": statistics.median(grid[best_lr, best_epochs]),
            "plain_best_any_epochs": overall, "sent": sent,
            "defaults": defaults, "at_best": at_best, "search": search}


Known = dict[tuple[Any, ...], list[float]]


def plain_grid(case: Case, train: list[Any], test: list[Any], args: argparse.Namespace,
               known: Known) -> dict[tuple[float, int], list[float]]:
    """Every grid point's scores; a point already scored on the same rows (an earlier case of
    this run, or --grid-from) is not trained again: the plain loop is deterministic."""
    rows = (case.folder, *row_counts(case, vars(args)))
    grid: dict[tuple[float, int], list[float]] = {}
    for lr in args.grid_lrs:
        for epochs in args.grid_epochs:
            point = (*rows, f"{lr:g}x{epochs}")
            reused = point in known
            grid[lr, epochs] = known[point] if reused else [
                plain_point(case, train, test, lr, epochs, s, args)
                for s in range(args.grid_seeds or args.seeds)]
            known[point] = grid[lr, epochs]
            print(f"plain lr {lr:g} x {epochs} epochs{' (known)' if reused else ''}: "
                  f"{grid[lr, epochs]}", flush=True)
    return grid


def known_grid(path: str | None) -> Known:
    """Grid points of an earlier run's results file, by the rows they were scored on."""
    if not path:
        return {}
    earlier = json.loads(Path(path).read_text())
    return {(CASES[name].folder, *row_counts(CASES[name], earlier["args"]), point): scores
            for name, r in earlier["cases"].items() for point, scores in r["grid"].items()}


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def summary(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'case':<8}{'plain best':>11}{'at':>12}{'defaults':>10}{'d - best':>10}"
             f"{'svc@best':>10}{'s - p':>8}{'search':>8}{'job F1':>8}{'served':>8}"
             f"{'any ep':>8}"]
    for name, r in results.items():
        point = f"{r['best_point']['learning_rate']:g}x{r['best_point']['n_epochs']}"
        d, b = median(r["defaults"], "score"), median(r["at_best"], "score")
        b = float("nan") if b is None else b
        found = median(r.get("search", []), "score")
        job_f1, served = (median(r["defaults"], "job_entity_f1"),
                          median(r["defaults"], "served_span_f1"))
        lines.append(
            f"{name:<8}{r['plain_best']:>11.4f}{point:>12}{d:>10.4f}{d - r['plain_best']:>+10.4f}"
            f"{b:>10.4f}{b - r['plain_best']:>+8.4f}"
            f"{'-' if found is None else f'{found:.4f}':>8}"
            f"{'-' if job_f1 is None else f'{job_f1:.4f}':>8}"
            f"{'-' if served is None else f'{served:.4f}':>8}"
            f"{r['plain_best_any_epochs']:>8.4f}")
    return "\n".join(lines)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="sst2,trec")
    parser.add_argument("--rows", type=int, default=2000, help="training rows per case")
    parser.add_argument("--test-rows", type=int, default=500, help="scored rows per case")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per point; medians")
    parser.add_argument("--grid-seeds", type=int, default=0,
                        help="seeds per plain-grid point (default: --seeds)")
    parser.add_argument("--skip-at-best", action="store_true",
                        help="no service job at the grid's best point (bench/parity.py "
                             "measures equal budgets)")
    parser.add_argument("--grid-lrs", type=floats, default=[5e-5, 1e-4, 2e-4])
    parser.add_argument("--grid-epochs", type=lambda t: [int(x) for x in t.split(",")],
                        default=[1, 3])
    parser.add_argument("--grid-fp32", dest="grid_bf16", action="store_false",
                        help="plain loop in fp32 (default: bf16 autocast, as the service "
                             "trains here; half the time at equal accuracy)")
    parser.add_argument("--search-trials", type=int, default=8,
                        help="trials of the search job (0: no search job)")
    parser.add_argument("--grid-from", help="an earlier results file whose grid points on the "
                                            "same rows are reused instead of trained again")
    parser.add_argument("--url", help="use this running service instead of starting one")
    args = parser.parse_args(argv)
    known = known_grid(args.grid_from)
    results = {name: run_case(name, args, known) for name in args.cases.split(",")}
    print(f"\n(median of {args.seeds} seed(s); score = accuracy, or entity F1 for conll)")
    print(summary(results))
    common.write_results("quality", args, {"cases": results})


if __name__ == "__main__":
    main()
