"""The training loop: transformers' Trainer on length-grouped batches, reporting to an observer.

Trainer gives us checkpoint/resume of weights, optimizer, scheduler, RNG and data order;
our callback adds progress events, cooperative cancel/pause and checkpoint registration.
"""

import math
import os
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    EarlyStoppingCallback,
    EvalPrediction,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)

from app.domain.statuses import StopReason
from app.ml.base_models import max_positions, parameter_count
from app.ml.batching import LengthGroupedSampler
from app.ml.checkpoints import MANIFEST, latest_complete_checkpoint, write_manifest
from app.ml.distributed import (
    agreed_stop,
    fine_tune_across_processes,
    gathered_on_first,
    per_process,
)
from app.ml.hyperparameters import DataProfile, Hyperparameters
from app.ml.lora import check_base, finish_checkpoint, is_adapter_model, with_adapters
from app.ml.precision import use_bf16
from app.ml.selection import choose_checkpoint
from app.ml.tasks.base import SOURCE_ROW, Row, TaskAdapter

# Rows tokenized to measure row lengths for the automatic max_length.
PROFILE_ROWS = 2_000

# How often (in optimizer steps) the CPU thread count is re-measured: load on a shared host moves.
THREAD_RETUNE_STEPS = 50

# Trainer state files we drop from checkpoints once a job is finished: only resume needs them.
RESUME_ONLY_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


class TrainingObserver(Protocol):
    """What the loop tells the outside world, and how it learns it should stop."""

    def on_progress(self, progress: dict[str, Any]) -> None: ...

    def on_evaluation(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, step: int, epoch: float, metrics: dict[str, float],
                      directory: Path) -> None: ...

    def stop_requested(self) -> StopReason | None:
        """Why the run should stop now, or None to go on."""
        ...


@dataclass
class TrainingPlan:
    task: TaskAdapter
    base_model: str
    train_rows: Sequence[Row]
    eval_rows: Sequence[Row]
    labels: list[str]
    hyperparameters: Hyperparameters
    seed: int
    output_dir: Path
    # bf16 autocast where the hardware computes bf16 natively (app/ml/precision.py).
    mixed_precision: bool = True
    # Training processes, data parallel under torchrun (app/ml/distributed.py); batch_size
    # is what one step trains on across all of them.
    processes: int = 1


@dataclass
class TrainingResult:
    stopped: StopReason | None
    best_checkpoint: Path | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    # The best checkpoint's figures that are not one number (a confusion matrix).
    best_tables: dict[str, Any] = field(default_factory=dict)
    train_runtime_s: float = 0.0
    evaluate_and_save_s: float = 0.0
    train_samples_per_s: float = 0.0
    trained_tokens: int = 0
    # Where training ended: before total_steps when early stopping ended it.
    final_step: int = 0
    total_steps: int = 0
    best_step: int = 0

    @property
    def stopped_early(self) -> bool:
        return self.stopped is None and 0 < self.final_step < self.total_steps


def stratified_split(rows: Sequence[Row], fraction: float, seed: int,
                     key: str | None = "label") -> tuple[list[Row], list[Row]]:
    """Hold out `fraction` of each label's rows (at least one where a label has two or more).

    With no key, every row is in one group: a seeded random split."""
    by_label: dict[Any, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row.get(key) if key else None].append(row)
    rng = random.Random(seed)
    train: list[Row] = []
    held_out: list[Row] = []
    for group in by_label.values():
        group = group[:]
        rng.shuffle(group)
        n_held = min(len(group) - 1, max(1, round(len(group) * fraction)))
        held_out.extend(group[:n_held])
        train.extend(group[n_held:])
    rng.shuffle(train)
    return train, held_out


class _ServiceCallback(TrainerCallback):
    def __init__(self, observer: TrainingObserver, samples_per_step: int, task: TaskAdapter):
        self.observer = observer
        self.samples_per_step = samples_per_step
        self.task = task
        self.stop_reason: StopReason | None = None
        self.eval_by_step: dict[int, dict[str, float]] = {}
        self._started = time.monotonic()
        self.start_step = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        self._started = time.monotonic()
        self.start_step = state.global_step

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        # Rank 0 alone hears of stops; every rank stops after the same step.
        reason = agreed_stop(self.observer.stop_requested() if state.is_world_process_zero
                             else None)
        if reason:
            self.stop_reason = StopReason(reason)
            control.should_training_stop = True
            # Pausing or handing the job back keeps the work done so far: checkpoint first.
            control.should_save = self.stop_reason.keeps_progress

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        if self.stop_reason:
            # A stop mid-epoch ends the epoch loop early; the epoch strategy would then
            # evaluate and save again. The stop already saved what it needed.
            control.should_evaluate = False
            control.should_save = False

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" not in logs or not state.is_world_process_zero:
            return
        elapsed = max(time.monotonic() - self._started, 1e-6)
        steps_done = state.global_step - self.start_step
        rate = steps_done / elapsed
        remaining = state.max_steps - state.global_step
        self.observer.on_progress({
            "step": state.global_step,
            "total_steps": state.max_steps,
            "epoch": round(state.epoch or 0.0, 4),
            "train_loss": logs["loss"],
            "learning_rate": logs.get("learning_rate"),
            "samples_per_s": round(rate * self.samples_per_step, 2),
            "eta_s": round(remaining / rate, 1) if rate > 0 else None,
        })

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        clean = evaluation_metrics(self.task, metrics or {})
        self.eval_by_step[state.global_step] = clean
        if kwargs.get("model") is not None:
            self.task.keep_for_serving(kwargs["model"], evaluation_tables(metrics or {}))
        if state.is_world_process_zero:
            self.observer.on_evaluation(state.global_step, clean)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return  # rank 0 writes the checkpoint's every file (see _save_rng_state)
        directory = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        if is_adapter_model(kwargs.get("model")):
            finish_checkpoint(kwargs["model"], directory)
        write_manifest(directory)  # last: only now is the checkpoint whole
        metrics = self.eval_by_step.get(state.global_step, {})
        self.observer.on_checkpoint(state.global_step, state.epoch or 0.0, metrics, directory)


class _ThreadTuner(TrainerCallback):
    """Keeps torch's CPU thread count at whichever setting runs this model fastest right now.

    All-cores is torch's default and best on an idle host, but OpenMP threads spin-wait on
    each other: when other processes hold cores, a step can run several times slower than
    on one thread. A short forward pass in eval mode (no dropout, so no RNG is consumed and
    training is unchanged) is timed at each candidate count, at the start and every
    THREAD_RETUNE_STEPS steps.
    """

    def __init__(self, model: torch.nn.Module, batch_size: int, bf16: bool):
        self.model = model
        self.bf16 = bf16  # timed in the format training computes in: threads scale differently
        top = torch.get_num_threads()
        self.candidates = sorted({top, max(1, top // 2), 1}, reverse=True)
        # About one training batch of short rows: big enough to show how the threads scale.
        self.probe = torch.full((batch_size, 16), 100, dtype=torch.long)
        self.history: list[int] = []

    def tune(self) -> None:
        if len(self.candidates) == 1:
            return
        try:
            self.history.append(self._measure())
        except Exception:  # a model the probe does not fit: keep torch's default
            self.candidates = self.candidates[:1]
            torch.set_num_threads(self.candidates[0])

    def _measure(self) -> int:
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        probe = self.probe.to(device)
        timings: dict[int, list[float]] = {n: [] for n in self.candidates}
        # Forward and back again through the candidates, so a trend in load cancels out.
        order = self.candidates + self.candidates[::-1]
        try:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                        enabled=self.bf16):
                torch.set_num_threads(self.candidates[0])
                self.model(input_ids=probe)  # warm up
                for n in order:
                    torch.set_num_threads(n)
                    started = time.perf_counter()
                    self.model(input_ids=probe)
                    timings[n].append(time.perf_counter() - started)
        finally:
            self.model.train(was_training)
        best = min(self.candidates, key=lambda n: statistics.median(timings[n]))
        torch.set_num_threads(best)
        return best

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        self.tune()

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        if state.global_step % THREAD_RETUNE_STEPS == 0 and state.global_step < state.max_steps:
            self.tune()


def evaluation_metrics(task: TaskAdapter, logged: dict[str, float]) -> dict[str, float]:
    """One evaluation's metrics as jobs and versions show them, from what Trainer logged."""
    clean = {k.removeprefix("eval_"): v for k, v in logged.items()
             if k != "step" and _is_number(v)
             and (k == "eval_loss" or not k.startswith("eval_") or _is_quality(k))}
    return task.report(clean)


def evaluation_tables(logged: dict[str, Any]) -> dict[str, Any]:
    """One evaluation's figures that are not one number (a confusion matrix): the version
    keeps them, while jobs, checkpoints and events show the flat scores alone."""
    return {k.removeprefix("eval_"): v for k, v in logged.items()
            if k.startswith("eval_") and not _is_number(v)}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)


def run_evaluations(task: TaskAdapter, state: TrainerState) -> dict[int, dict[str, float]]:
    """Every evaluation of the run by step, earlier attempts' included: Trainer keeps them in
    its state, which a resumed run restores from the checkpoint."""
    return {int(entry["step"]): evaluation_metrics(task, entry) for entry in state.log_history
            if "eval_loss" in entry and "step" in entry}


def _is_quality(key: str) -> bool:
    return not key.endswith(("_runtime", "_per_second", "samples_per_second", "steps_per_second"))


class _EvaluateAndSaveClock(TrainerCallback):
    """Times how much of `train()` went to evaluations and checkpoints rather than to
    training steps: from the moment Trainer decides to evaluate or save (after it has
    logged) to the end of the checkpoint's registration."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since: float | None = None

    def _start_if_due(self, control: TrainerControl) -> None:
        if control.should_evaluate or control.should_save:
            self._since = time.perf_counter()

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        self._start_if_due(control)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        self._start_if_due(control)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        # The training-loss line is logged just before evaluating and is not evaluation. The
        # evaluation's own metrics are logged from inside it, at its end: they must not
        # restart the clock, or every evaluation would be counted as training time.
        if self._since is not None and logs and "loss" in logs:
            self._since = time.perf_counter()

    def on_evaluate(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        if not control.should_save:
            self._stop()

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._since is not None:
            self.seconds += time.perf_counter() - self._since
            self._since = None


class _ServiceTrainer(Trainer):
    """Trainer that draws training batches from our length-grouped, resume-exact sampler.

    transformers 5 has no public way to give Trainer a sampler: `get_train_dataloader`, the
    documented override, builds its loader through the private `_get_dataloader` (column
    removal, worker seeding, accelerate's prepare, which skips the batches a resumed run
    has done). So this overrides the private `_get_train_sampler(train_dataset)` that
    `get_train_dataloader` calls; tests/unit/test_training.py checks that the loader
    Trainer builds still uses it, so a transformers update that changes the hook fails there.
    """

    def _get_train_sampler(self, train_dataset: Any = None) -> LengthGroupedSampler:
        dataset: Any = train_dataset if train_dataset is not None else self.train_dataset
        lengths = [len(features["input_ids"]) for features in dataset]
        # Every rank draws the same order; accelerate deals its batches out in turn. Groups
        # of one whole step's rows (all ranks') make a step train on the same rows whatever
        # the number of processes, so a job resumes with any number of them.
        return LengthGroupedSampler(
            lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps
            * self.args.world_size, seed=self.args.seed)

    def _save_rng_state(self, output_dir: str) -> None:
        """Each rank's random state, written by rank 0 alone (Trainer has every rank write
        its own file): a resumed run draws the same dropout on every rank."""
        if self.args.world_size <= 1:
            super()._save_rng_state(output_dir)
            return
        states = gathered_on_first(_rng_states())
        if states is not None:
            os.makedirs(output_dir, exist_ok=True)
            for rank, state in enumerate(states):
                torch.save(state, os.path.join(output_dir, f"rng_state_{rank}.pth"))


def _rng_states() -> dict[str, Any]:
    """This process's random states, as Trainer saves and restores them."""
    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                              "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.random.get_rng_state_all()
    return states


def _training_arguments(plan: TrainingPlan, steps_per_epoch: int,
                        bf16: bool) -> TrainingArguments:
    hp = plan.hyperparameters
    total_steps = steps_per_epoch * hp.n_epochs
    strategy = "steps" if hp.eval_steps else "epoch"
    on_gpu = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(plan.output_dir),
        num_train_epochs=hp.n_epochs,
        per_device_train_batch_size=per_process(hp.batch_size),
        # On: across processes, Trainer multiplies each loss by their number, expecting the
        # model to divide by the tokens of all of them; our classifiers average their own
        # batch, so losses (and the losses jobs report) came out that many times too big.
        average_tokens_across_devices=False,
        per_device_eval_batch_size=max(hp.batch_size, 64),
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        lr_scheduler_type="linear",
        warmup_steps=math.ceil(total_steps * hp.warmup_ratio),
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=hp.eval_steps,
        save_steps=hp.eval_steps or 500,
        logging_strategy="steps",
        logging_steps=max(1, min(50, total_steps // 20)),
        load_best_model_at_end=True,
        metric_for_best_model=plan.task.best_metric,
        greater_is_better=plan.task.greater_is_better,
        prediction_loss_only=plan.task.evaluates_loss_only,
        seed=plan.seed,
        data_seed=plan.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=on_gpu,
        use_cpu=not on_gpu,
        bf16=bf16,
    )


def _length_sorted(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluation order does not change metrics; sorting by length removes most padding.
    The sort is stable, so the windows of one row keep their order."""
    return sorted(features, key=lambda f: len(f["input_ids"]))


@dataclass
class _Encoded:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    # Which evaluation row each evaluation feature came from, in evaluation order.
    sources: list[int]


@dataclass
class _Run:
    """One call of fine_tune: its trainer, and the callbacks that watch it."""

    trainer: _ServiceTrainer
    service: _ServiceCallback
    clock: _EvaluateAndSaveClock


def fine_tune(plan: TrainingPlan, observer: TrainingObserver) -> TrainingResult:
    """Train `plan`, resuming from its latest complete checkpoint, reporting to `observer`:
    in this process, or data parallel across `plan.processes` (app/ml/distributed.py)."""
    if plan.hyperparameters.lora is not None:
        check_base(plan.task.name, plan.base_model)
    if plan.processes > 1:
        return fine_tune_across_processes(plan, observer)
    return train_in_this_process(plan, observer)


def data_profile(task: TaskAdapter, rows: Sequence[Row], base_model: str) -> DataProfile:
    """What the automatic hyperparameters look at: the row count, the base model's size and
    input limit, and (for tasks that cut long rows) how long the rows are in its tokens."""
    long_rows = None
    # Evenly spaced rows, at most PROFILE_ROWS: a percentile needs no more.
    step = math.ceil(len(rows) / PROFILE_ROWS)
    inputs = [task.row_inputs(rows[i]) for i in range(0, len(rows), step)]
    if inputs and inputs[0] is not None:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        texts, pairs = zip(*inputs, strict=True)
        encoded = tokenizer(list(texts), list(pairs) if pairs[0] is not None else None)
        lengths = sorted(len(ids) for ids in encoded["input_ids"])
        long_rows = lengths[min(len(lengths) - 1, math.ceil(0.99 * len(lengths)) - 1)]
    return DataProfile(n_rows=len(rows), parameters=parameter_count(base_model),
                       long_row_tokens=long_rows, max_positions=max_positions(base_model))


def train_in_this_process(plan: TrainingPlan, observer: TrainingObserver) -> TrainingResult:
    """One process's part of training `plan` (under torchrun, one rank's)."""
    tokenizer = AutoTokenizer.from_pretrained(plan.base_model)
    encoded = encode(plan, tokenizer)
    run = _build_run(plan, observer, tokenizer, encoded)
    threads_before = torch.get_num_threads()
    try:
        output = run.trainer.train(resume_from_checkpoint=latest_checkpoint(plan.output_dir))
    finally:
        torch.set_num_threads(threads_before)
    if run.service.stop_reason:
        return TrainingResult(stopped=run.service.stop_reason)
    return _result(plan, run, encoded, float(output.metrics.get("train_runtime", 0.0)))


def encode(plan: TrainingPlan, tokenizer: PreTrainedTokenizerBase) -> _Encoded:
    """The plan's rows as model features: training as they come, evaluation by length."""
    label2id = {label: i for i, label in enumerate(plan.labels)}
    max_length = plan.hyperparameters.max_length
    train = plan.task.encode(plan.train_rows, tokenizer, label2id, max_length)
    evaluation = _length_sorted(plan.task.encode(plan.eval_rows, tokenizer, label2id,
                                                 max_length))
    return _Encoded(train, evaluation, [f.get(SOURCE_ROW, i) for i, f in enumerate(evaluation)])


def _build_run(plan: TrainingPlan, observer: TrainingObserver,
               tokenizer: PreTrainedTokenizerBase, encoded: _Encoded) -> _Run:
    hp = plan.hyperparameters
    # Seeded before the new head is initialised, so the same seed gives the same model.
    set_seed(plan.seed)
    model: torch.nn.Module = plan.task.load_model(plan.base_model, plan.labels)
    plan.task.prepare_head(model, encoded.train)
    if hp.lora is not None:
        model = with_adapters(model, hp.lora, plan.task.name)
    samples_per_step = hp.batch_size * hp.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(len(encoded.train) / samples_per_step))
    bf16 = use_bf16(plan.mixed_precision)
    service = _ServiceCallback(observer, samples_per_step, plan.task)
    clock = _EvaluateAndSaveClock()
    trainer = _ServiceTrainer(
        model=model,
        args=_training_arguments(plan, steps_per_epoch, bf16),
        train_dataset=encoded.train,
        eval_dataset=encoded.eval,
        data_collator=plan.task.collator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=(None if plan.task.evaluates_loss_only
                         else lambda p: _metrics(plan, p, encoded.sources)),
        callbacks=[service, *_helpers(plan, model, bf16), clock],
    )
    # Progress goes to the job's events through our callback, not to stdout.
    trainer.remove_callback(PrinterCallback)
    return _Run(trainer, service, clock)


def _helpers(plan: TrainingPlan, model: torch.nn.Module, bf16: bool) -> list[TrainerCallback]:
    """Callbacks beside ours: CPU thread tuning, and early stopping when asked for."""
    hp = plan.hyperparameters
    helpers: list[TrainerCallback] = []
    if not torch.cuda.is_available():
        helpers.append(_ThreadTuner(model, hp.batch_size, bf16))
    if hp.early_stopping_patience:
        helpers.append(EarlyStoppingCallback(early_stopping_patience=hp.early_stopping_patience))
    return helpers


def _result(plan: TrainingPlan, run: _Run, encoded: _Encoded, runtime: float) -> TrainingResult:
    """What a finished run reports: its best checkpoint and how fast it trained."""
    state, n_epochs = run.trainer.state, plan.hyperparameters.n_epochs
    evaluations = run_evaluations(plan.task, state)
    best = _version_checkpoint(plan, state, evaluations)
    best_step = int(best.name.split("-")[-1]) if best else state.global_step
    return TrainingResult(
        stopped=None,
        best_checkpoint=best,
        best_metrics=evaluations.get(best_step, {}),
        best_tables=_tables_at(state, best_step),
        train_runtime_s=runtime,
        evaluate_and_save_s=run.clock.seconds,
        train_samples_per_s=_samples_per_training_second(run, runtime,
                                                         len(encoded.train) * n_epochs),
        trained_tokens=sum(len(f["input_ids"]) for f in encoded.train) * n_epochs,
        final_step=state.global_step,
        total_steps=state.max_steps,
        best_step=best_step,
    )


def _tables_at(state: TrainerState, step: int) -> dict[str, Any]:
    for entry in state.log_history:
        if "eval_loss" in entry and entry.get("step") == step:
            return evaluation_tables(entry)
    return {}


def _version_checkpoint(plan: TrainingPlan, state: TrainerState,
                        evaluations: dict[int, dict[str, float]]) -> Path | None:
    """The checkpoint that becomes the version (app/ml/selection.py): the latest within one
    standard error of the best score; Trainer's own pick where that one is not whole."""
    step = choose_checkpoint(evaluations, plan.task.best_metric, plan.task.greater_is_better,
                             len(plan.eval_rows))
    chosen = plan.output_dir / f"checkpoint-{step}"
    if step is not None and (chosen / MANIFEST).is_file():
        return chosen
    return Path(state.best_model_checkpoint) if state.best_model_checkpoint else None


def _samples_per_training_second(run: _Run, runtime: float, samples: int) -> float:
    """Rows trained per second of training steps: this attempt's steps only, with the
    time spent evaluating and writing checkpoints left out (as a plain loop reports it)."""
    state = run.trainer.state
    done = samples * (state.global_step - run.service.start_step) / max(state.max_steps, 1)
    stepping = runtime - run.clock.seconds
    return done / stepping if stepping > 0 else 0.0


def _metrics(plan: TrainingPlan, prediction: EvalPrediction,
             sources: list[int]) -> dict[str, float]:
    return plan.task.compute_metrics(prediction.predictions, prediction.label_ids, plan.labels,
                                     sources)


def latest_checkpoint(output_dir: Path) -> str | None:
    """The newest complete checkpoint; a torn one (killed mid-write) is skipped."""
    latest = latest_complete_checkpoint(output_dir)
    return str(latest) if latest else None


def strip_resume_state(output_dir: Path) -> None:
    """After a job ends, keep each checkpoint's weights but drop optimizer and RNG state."""
    for checkpoint in output_dir.glob("checkpoint-*"):
        for name in RESUME_ONLY_FILES:
            (checkpoint / name).unlink(missing_ok=True)
        for state in checkpoint.glob("rng_state_*.pth"):  # one per process, across several
            state.unlink()
