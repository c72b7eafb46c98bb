"""Config dataclasses, one per stage, filled from a YAML recipe plus `key.sub=value` overrides.

Every field carries a help string (`python -m pipeline help` prints them). Loading is strict: an unknown key
or a wrongly typed value is a one-line `ConfigError` naming the key and, for typos, the closest valid key.

Longer than most modules (~430 lines) because every recipe key is declared here, once, with its help string and
range; splitting the dataclasses from the loader would put a key's declaration and its checks in two places.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.durable import atomic_write_text


class ConfigError(ValueError):
    """A user mistake in a recipe or override: printed as one line by the CLI."""


def f(default: Any, help: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
      lt: float | None = None, nonempty: bool = False):
    """A dataclass field with a help string and its allowed range (checked when a recipe is loaded, listed by
    `python -m pipeline help`); mutable defaults are copied per instance."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"help": help, "bounds": bounds, "nonempty": nonempty}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        import copy

        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# Training seeds reach np.random.seed, which takes 0 .. 2**32 - 1: anything else was a traceback once a stage ran
# (sampling and data seeds are hashed or go to random.Random, which take any integer).
SEED_MAX = 2**32 - 1

_OPS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
        "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def range_text(fl: dataclasses.Field) -> str:
    """'>= 1', '> 0 and <= 1', 'non-empty' ... for a field's declared range ('' when it has none)."""
    # whole numbers in full: '{:g}' would print the seeds' 2**32 - 1 as 4.29497e+09
    parts = [f"{_OPS[k][0]} {int(v) if float(v).is_integer() else f'{v:g}'}"
             for k, v in fl.metadata.get("bounds", {}).items()]
    if fl.metadata.get("nonempty"):
        parts.append("non-empty")
    return " and ".join(parts)


def _check_range(fl: dataclasses.Field, value: Any, key: str) -> None:
    if value is None:
        return
    if fl.metadata.get("nonempty") and len(value) == 0:
        raise ConfigError(f"'{key}' must not be empty")
    bounds = fl.metadata.get("bounds", {})
    values = value if isinstance(value, list) else [value]
    # NaN compares False with everything, so it fails every bound; inf fails an upper one
    if any(not _OPS[k][1](v, b) for v in values for k, b in bounds.items()):
        raise ConfigError(f"'{key}' must be {range_text(fl)}, got {value!r}")
    # inf passes a lower bound: an infinite beta, learning rate or temperature would fail only after SFT, as a
    # non-finite loss, or silently (sampling at T = inf)
    if any(isinstance(v, float) and math.isinf(v) for v in values):
        raise ConfigError(f"'{key}' must be a finite number, got {value!r}")


@dataclass
class WorldConfig:
    n_people: int = f(60, "size of the pool of invented person names", ge=1)
    n_places: int = f(30, "size of the pool of invented place names", ge=1)
    n_distractors: int = f(1, "distractor sentences per article (other people, places, numbers)", ge=0)
    paraphrase: float = f(0.25, "0..1: share of article fact sentences drawn from alternative phrasings", ge=0, le=1)
    summary_templates: int = f(3, "number of reference-summary phrasings (1..4)", ge=1, le=4)
    lead_first: float = f(0.85, "probability that the fact sentence opens the article (else it is 2nd or 3rd)",
                          ge=0, le=1)
    rivals: int = f(0, "rival sentences per article: another person in the fact's role did the same kind of event "
                       "in another place with another number. A summary that copies a rival states wrong facts "
                       "that ARE in the document, so overlap with the document cannot see the error (0 = none)", ge=0)


@dataclass
class DataConfig:
    source: Literal["synthetic", "local", "hub"] = f("synthetic", "where prompts come from")
    path: str = f("", "local: a .json/.jsonl file; hub: a dataset name such as EdinburghNLP/xsum")
    hub_config: str | None = f(None, "hub: dataset configuration name, if any")
    n_examples: int = f(30000, "synthetic: number of articles to generate (enough that the default SFT makes about "
                                    "one pass and does not memorize the online prompts); local/hub: cap on rows "
                                    "(0 = all)", ge=0)
    eval_size: int = f(200, "rows in the eval split (used for SFT metrics)", ge=0)
    test_size: int = f(200, "rows in the held-out test split (used for win rates)", ge=0)
    max_document_words: int = f(400, "documents longer than this are truncated (counted in the data report)", ge=1)
    seed: int = f(0, "seed of generation and split shuffling")
    exclude_docs_of: str = f("", "leave out every row whose document (same id, or same text) a learned judge was "
                                 "trained on: its checkpoint directory (judge_training.json), or any JSON-lines file "
                                 "of rows with id and document ('' = keep every row); counted in the data report")
    world: WorldConfig = f(WorldConfig(), "synthetic news world knobs")


@dataclass
class LoRAConfig:
    enabled: bool = f(False, "train LoRA adapters (peft) instead of all weights")
    r: int = f(8, "adapter rank", ge=1)
    alpha: int = f(16, "adapter scaling numerator", gt=0)
    dropout: float = f(0.0, "adapter dropout", ge=0, lt=1)
    target_modules: list[str] | None = f(None, "module names to adapt (None = peft's default for the model type)")


@dataclass
class ModelConfig:
    name: str = f("shape:t5-micro", "hub name, local directory, a .gguf file, 'gguf:smollm2', or 'shape:<name>' "
                  "for random weights (t5-tiny, t5-micro, t5-micro-l4, t5-mini, t5-small, t5-base, t5-large, "
                  "llama-tiny)")
    kind: Literal["auto", "seq2seq", "causal"] = f("auto", "model family; auto = read from the model config")
    tokenizer: str = f("auto", "'auto' (the model's own; for shapes the world tokenizer), 'world', or a path/hub name")
    dtype: Literal["float32", "bfloat16", "float16"] = f("float32", "weights dtype")
    autocast: Literal["none", "bfloat16"] = f(
        "none", "mixed precision: every forward pass (training, scoring, sampling) runs under torch.autocast in "
        "bfloat16 while weights, gradients and optimizer state keep `dtype`; log-probs are taken from float32 "
        "logits. Faster where bfloat16 matmuls are (GPUs from Ampere on; CPUs with AVX512-BF16 or AMX); 'none' = "
        "every op in `dtype`")
    trust_remote_code: bool = f(False, "allow hub repos to run their own Python code (off unless you trust them)")
    prompt_prefix: str = f("Summarize: ", "prefix put before the document for seq2seq models")
    max_input_tokens: int = f(512, "documents are truncated to this many tokens", ge=1)
    lora: LoRAConfig = f(LoRAConfig(), "parameter-efficient fine-tuning")
    vocab_size: int = f(0, "shape: models: embedding rows (0 = the tokenizer's size; 32128 = the paper T5 vocabulary)",
                        ge=0)
    init_seed: int = f(0, "seed of shape: random weights and of LoRA adapter initialisation", ge=0, le=SEED_MAX)


@dataclass
class SFTConfig:
    enabled: bool = f(True, "run supervised fine-tuning (off = start online from the model as loaded)")
    steps: int = f(900, "optimizer steps", ge=1)
    batch_size: int = f(32, "examples per step", ge=1)
    lr: float = f(3e-3, "peak learning rate (linear warm-up, cosine decay)", gt=0)
    warmup: int = f(30, "warm-up steps", ge=0)
    weight_decay: float = f(0.0, "AdamW weight decay", ge=0)
    max_target_tokens: int = f(64, "reference summaries are truncated to this many tokens", ge=1)
    eval_examples: int = f(200, "eval-split rows scored with ROUGE-Lsum at the end (0 = skip)", ge=0)
    eval_max_new_tokens: int = f(48, "greedy decoding length for the ROUGE evaluation", ge=1)
    log_every: int = f(25, "steps between loss log lines", ge=1)
    seed: int = f(0, "seed of initialisation order and batching", ge=0, le=SEED_MAX)
    copy_steps: int = f(0, "steps of copy pretraining before SFT (input: the document; target: one of its sentences "
                           "at random), as T5 is pretrained on text before it is fine-tuned; 0 = none", ge=0)
    copy_lr: float = f(1e-3, "peak learning rate of copy pretraining (linear warm-up, cosine decay)", gt=0)


@dataclass
class JudgeConfig:
    name: str = f("oracle", "the simulated human: oracle | reward_model | pairwise_llm | pairwise_http | python")
    params: dict = f({}, "judge options (oracle: temperature, persona, teacher; reward_model/pairwise_llm: model...)")


@dataclass
class SelectorConfig:
    name: str = f("none", "which source to transfer from, or which labels to ask: none | fixed | ucb | relevance | "
                          "dual_active | lowrank | shared | ensemble | linucb (docs/algorithms.md; "
                          "pipeline/selection/registry.py)")
    params: dict = f({}, "the selector's options, typed per selector (`python -m pipeline help` lists them)")


@dataclass
class OnlineConfig:
    iterations: int = f(3, "online iterations", ge=1)
    prompts_per_iteration: int = f(256, "fresh random prompts drawn from the train split each iteration", ge=1)
    k: int = f(4, "online samples per prompt", ge=2)
    n_pool: int = f(0, "extra Best-of-N pool samples per prompt (0 = no transfer)", ge=0)
    replace_num: int = f(2, "transferred responses that replace online responses 0..replace_num-1", ge=0)
    temperature: float = f(1.0, "sampling temperature", gt=0)
    top_k: int = f(0, "top-k sampling cut (0 = off)", ge=0)
    max_new_tokens: int = f(48, "sampling length limit", ge=1)
    gen_batch_size: int = f(64, "prompts per generation batch", ge=1)
    loss: Literal["dpo", "ipo", "xpo"] = f("dpo", "preference loss on sequence log-ratios")
    beta: float = f(0.1, "KL coefficient", gt=0)
    xpo_alpha: float = f(1e-3, "XPO exploration coefficient (published term, see pipeline/losses.py)", ge=0)
    nll_alpha: float = f(0.0, ge=0, help="weight of an NLL term on the chosen response, per token, added to the loss "
                                       "(RPO; TRL's rpo_alpha; 0 = the paper's losses, pipeline/losses.py)")
    sft_anchor: float = f(0.0, ge=0, help="weight of an NLL term on the reference summaries of random train rows (the "
                                         "SFT data: no new labels), per token, added at every update step so that the "
                                         "preference loss cannot erode what SFT taught (InstructGPT's pretraining "
                                         "mix); 0 = off (docs/testbed.md)")
    min_margin: float = f(0.0, ge=0, help="train on a prompt's pair only if the judge's highest and lowest scores "
                                         "differ by at least this (judge-score units; 0 = drop exact ties only). The "
                                         "labels are spent either way: a filter on confidence, not on budget "
                                         "(docs/testbed.md)")
    reference: Literal["previous", "initial"] = f("previous", "reference policy: previous iterate (paper) or initial")
    lr: float = f(5e-5, "peak learning rate of the update (linear warm-up, cosine decay)", gt=0)
    warmup: int = f(10, "warm-up steps per iteration", ge=0)
    epochs: int = f(3, "passes over the iteration's pairs", ge=1)
    batch_size: int = f(16, "pairs per optimizer step", ge=1)
    max_grad_norm: float = f(1.0, "gradient clipping", gt=0)
    sources: list[dict] = f([], "source rewards to transfer from, e.g. [{name: rouge}, {name: loglik, model: ...}]")
    selector: SelectorConfig = f(SelectorConfig(), "transfer arm selection")
    max_judge_failure_rate: float = f(0.1, "stop the online stage when more than this share of an iteration's "
                                           "judge answers failed (raised or NaN; stored as NULL, never a score)",
                                           ge=0, le=1)
    seed: int = f(0, "seed of prompt draws and sampling", ge=0, le=SEED_MAX)


@dataclass
class EvalConfig:
    n_prompts: int = f(200, "held-out test prompts per comparison", ge=1)
    seeds: list[int] = f([0, 1, 2], "sampling/judge seeds; one win rate per seed", nonempty=True)
    temperature: float = f(1.0, "sampling temperature of both policies (0 = greedy)", ge=0)
    samples_per_prompt: int = f(1, "responses per test prompt and policy; a prompt's outcome is the mean over the "
                                   "paired samples (j-th of a vs j-th of b): less sampling noise per seed, more labels",
                                   ge=1)
    max_new_tokens: int = f(48, "generation length limit", ge=1)
    judge: JudgeConfig | None = f(None, "judge for win rates (None = the online judge)")
    baseline: Literal["sft", "initial"] = f("sft", "policy every iterate is compared against: the SFT checkpoint, or "
                                                   "the model as the recipe names it before SFT (initial)")


@dataclass
class SourceModelConfig:
    label: str = f("big", "name a loglik source uses to point at this model: model: 'run:<label>'")
    model: ModelConfig = f(ModelConfig(name="shape:t5-mini"), "the source model (same tokenizer as the policy)")
    sft: SFTConfig = f(SFTConfig(), "its own supervised fine-tuning (typically more steps than the policy's)")


@dataclass
class TableConfig:
    seeds: list[int] = f([0, 1, 2], "training seeds; each method runs once per seed from the shared SFT checkpoint",
                         nonempty=True, ge=0, le=SEED_MAX)
    methods: list[dict] = f([], "rows of the table as {label, selector: {name, params}}; empty = TPO (ucb), "
                               "no transfer, and pure exploit of every source")
    n_prompts: int = f(200, "held-out test prompts per head-to-head comparison", ge=1)
    versus: str = f("", "'' = the first method against each of the others; a method's label = every other method "
                        "against that one (e.g. no_transfer)")
    baseline: str = f("no_transfer", "method every other method is paired against in paired.csv (exact-utility "
                                      "headline, oracle judges)")
    pairs: list[list[str]] = f([], "more rows of the exact-utility headline as [method, baseline], each paired per "
                                   "training seed like every method against table.baseline, e.g. [[dual_active, "
                                   "dual_active:random]]: a method against its own baseline")
    aa: bool = f(True, "add the A/A row 'aa:<baseline>': the baseline trained again with other training seeds "
                       "(seed + aa_seed_offset) and paired against the baseline; its interval is the noise floor")
    aa_seed_offset: int = f(1000, "training-seed offset of the A/A row's second baseline run")
    utility_prompts: int = f(300, "held-out prompts for the exact-utility headline (judges that know the utility)",
                             ge=1)
    utility_samples: int = f(4, "samples per prompt and checkpoint for the exact-utility headline; every checkpoint "
                                "is sampled with the same sampling seeds (common random numbers)", ge=1)
    jobs: int = f(1, "online runs (method, seed) trained at once, each in its own process with one torch thread", ge=1)
    vary_build: bool = f(False, "give each training seed s its own build: the SFT checkpoint and source models "
                                "trained again with policy.init_seed, sft.seed and each source model's init_seed and "
                                "sft.seed offset by s, in <run_dir>/builds/seed<s> (s = 0: the recipe's own build); "
                                "every row of seed s (its A/A run too) starts from it, so the interval over seeds "
                                "covers build-to-build variation, not training noise alone. The world (data.seed) is "
                                "kept. Costs one build per seed")


@dataclass
class TrackingConfig:
    report_to: list[str] = f(["tensorboard"], "live curves: tensorboard (offline, event files under runs/<name>/tb) "
                                               "| wandb (only when installed and configured) | none")
    sample_prompts: int = f(4, "held-out test prompts whose summaries are logged each iteration (samples.md and a "
                               "TensorBoard text table; 0 = off)", ge=0)


@dataclass
class Recipe:
    name: str = f("demo", "run name; outputs go to runs/<name>/ unless run_dir is set", nonempty=True)
    run_dir: str = f("", "output directory (default runs/<name>)")
    seed: int = f(0, "global seed", ge=0, le=SEED_MAX)
    data: DataConfig = f(DataConfig(), "data stage")
    policy: ModelConfig = f(ModelConfig(), "the policy model")
    sft: SFTConfig = f(SFTConfig(), "supervised fine-tuning stage")
    judge: JudgeConfig = f(JudgeConfig(), "the simulated human that labels online responses")
    online: OnlineConfig = f(OnlineConfig(), "online preference optimisation stage")
    eval: EvalConfig = f(EvalConfig(), "win-rate evaluation stage")
    source_models: list[SourceModelConfig] = f([], "models the sources stage trains for loglik sources ('run:<label>')")
    table: TableConfig = f(TableConfig(), "make table: TPO vs baselines over seeds")
    tracking: TrackingConfig = f(TrackingConfig(), "live training curves and logged samples")

    @property
    def out(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")


# ---------------------------------------------------------------- strict loading


def _field_names(cls) -> list[str]:
    return [fl.name for fl in dataclasses.fields(cls)]


def closest(name, known) -> str | None:
    """The known name a mistyped one most likely meant (None when nothing is close): every "did you mean" hint."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    close = closest(key.rsplit(".", 1)[-1], valid)
    hint = f"; did you mean '{close}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key '{where}{key}'{hint}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"'{key}' may not be null")
    if origin is Literal:
        if value not in args:
            close = closest(value, args)
            hint = f" (did you mean '{close}'?)" if close else ""
            raise ConfigError(f"'{key}' must be one of {', '.join(map(str, args))}, got '{value}'{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, got {type(value).__name__} '{value}'")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {type(value).__name__} '{value}'")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' must be true or false, got '{value}'")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' must be a number, got '{value}'")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}' must be an integer, got '{value}'")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, got '{value}'")
        return value
    raise ConfigError(f"'{key}': unsupported type {tp}")


def _build(cls, raw: dict, where: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {fl.name: fl for fl in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise _unknown(str(key), list(fields), where)
        kwargs[key] = _coerce(value, hints[key], where + key)
        _check_range(fields[key], kwargs[key], where + key)
    return cls(**kwargs)


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cls: Any = Recipe
    node = raw
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else None
        if hints is not None and part not in hints:
            raise _unknown(part, _field_names(cls), ".".join(parts[:i]) + ("." if i else ""))
        if i == len(parts) - 1:
            node[part] = value
            return
        tp = hints[part] if hints is not None else dict
        tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
        cls = tp if dataclasses.is_dataclass(tp) else dict
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"'{'.'.join(parts[: i + 1])}' is not a mapping, cannot set '{dotted}'")


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: PyYAML keeps the last silently, so a second
    `sft:` block would drop every key of the first (YAML itself says keys are unique)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                mark = key_node.start_mark
                raise ConfigError(f"key '{key}' is given twice in one mapping (line {mark.line + 1}); YAML keeps only "
                                  "the last, so the first would be dropped silently: merge them into one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"recipe '{path}' does not exist")
    if path.is_dir():  # read_text's OSError would print as a failed run ("finished stages are kept")
        raise ConfigError(f"recipe '{path}' is a directory, not a YAML file")
    try:
        loader = _StrictLoader(path.read_text(encoding="utf-8"))
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except UnicodeDecodeError as e:
        raise ConfigError(f"recipe '{path}' is not UTF-8 text (byte {e.object[e.start]:#x} at offset {e.start}); "
                          "re-save it as UTF-8") from None
    except ConfigError as e:
        raise ConfigError(f"recipe '{path}': {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"recipe '{path}' is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if raw is None:  # an empty or comment-only file would silently run every default (the 30,000-article demo)
        raise ConfigError(f"recipe '{path}' is empty; give at least a name (python -m pipeline help lists every key)")
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe '{path}' must be a mapping of keys, got {type(raw).__name__}")
    return raw


def merge(base: dict, child: dict) -> dict:
    """The child's keys over the base's: mappings merge key by key, anything else (lists included) replaces."""
    out = dict(base)
    for key, value in child.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_raw(path: Path, seen: tuple = ()) -> dict:
    """A recipe file with its `base:` chain resolved (the base path is relative to the file that names it)."""
    path = Path(path)
    if path.resolve() in seen:
        raise ConfigError(f"recipe '{path}' inherits from itself (base chain: {' -> '.join(map(str, seen))})")
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"recipe '{path}': base must be a path to another recipe, got {base!r}")
    return merge(read_raw(path.parent / base, seen + (path.resolve(),)), raw)


def load_recipe(path: str | Path | None = None, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe (or the defaults when path is None), resolve its `base:` chain, apply overrides
    strictly. The run directory's config.yaml is the resolved recipe, with no base left in it."""
    raw = read_raw(Path(path)) if path is not None else {}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(raw, key, value)
    return _build(Recipe, raw)


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def save_resolved(recipe: Recipe, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(to_dict(recipe), sort_keys=False))


def describe(cls=Recipe, prefix: str = "") -> list[str]:
    """`key: help (default)` lines for every field, nested."""
    lines = []
    for fl in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[fl.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"{prefix}{fl.name}: {fl.metadata.get('help', '')}")
            lines += describe(tp, prefix + fl.name + ".")
        else:
            default = fl.default if fl.default is not dataclasses.MISSING else fl.default_factory()
            allowed = f"; {range_text(fl)}" if range_text(fl) else ""
            lines.append(f"{prefix}{fl.name}: {fl.metadata.get('help', '')} (default {default!r}{allowed})")
    return lines


def build_options(cls, raw: dict, where: str = ""):
    """A swappable part's typed options (a dataclass whose fields use `f`) from a recipe mapping, with the same
    strict typing and one-line errors as the recipe itself."""
    return _build(cls, raw, where)
