"""Import and export checkpoints of the authors' FPDM code and of DiT.

Both are `torch.save` files. A training checkpoint is a dict `{"model", "ema", "opt", "args",
"train_steps"}` (DiT's own train.py: `{"model", "ema", "opt", "args"}` with `args` an
`argparse.Namespace`; the authors' FPDM code: `args` a plain dict); DiT's released weights are a
bare state dict. Parameter names are the same as this kit's (`blocks.{i}.*` for DiT;
`blocks_pre.{i}.*`, `block_pre_projection.*`, `block_fixed_point_projection_fc{1,2}.*`,
`block_fixed_point.*`, `blocks_post.{i}.*` for FPDM), so the work is in what the names do not
say: sizes are inferred from shapes, the learned-sigma output channels are kept or dropped,
and the FPDM pre/post timestep-conditioning flag (not visible in the weights) comes from the
file's args or from you. docs/INTEROP.md has the full table.

Files are read with `torch.load(weights_only=True)`: tensors, dicts, lists and numbers only.
A file with other pickled objects is refused (InteropError says why and what to do); with
`allow_namespace=True` exactly one extra class, `argparse.Namespace`, is allowed (safe: it only
holds attributes), which is what DiT's own checkpoints need.

    python -m fpdm_core.interop import results/000-.../checkpoints/0400000.pt --out fpdm.safetensors
    python -m fpdm_core.interop export runs/fpdm/checkpoint.safetensors --out fpdm_for_authors_code.pt
"""
from __future__ import annotations

import argparse
import io
import math
import pickle
import pickletools
import re
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError

from . import cli
from .checkpoints import (CheckpointError, expected_shapes, load_checkpoint, save_checkpoint, shape_mismatch,
                          stored_diffusion)
from .diffusion import DiffusionConfig
from .models import DiT, FPDM, LIMITS, ModelConfig, build_model, sincos_pos_embed_2d

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / accelerate, torch.compile
WEIGHTS = ("ema", "model")
# DiT's presets: hidden size -> attention heads (head count is not visible in the weights)
DIT_HEADS = {1152: 16, 1024: 16, 768: 12, 384: 6}
DIT_MODEL_NAME = re.compile(r"DiT-(XL|L|B|S)/(\d+)$")
DIT_NAME_HEADS = {"XL": 16, "L": 16, "B": 12, "S": 6}
PPTC_ARG = "fixed_point_pre_post_timestep_conditioning"


class InteropError(ValueError):
    """A file or state dict this module cannot map onto the kit's models (the message says why)."""


# ----------------------------------------------------------------------------- reading
def pickled_globals(path: str | Path, max_pickles: int = 4) -> list[str]:
    """`module.name` of every GLOBAL / STACK_GLOBAL opcode in a torch.save file's pickle, read WITHOUT unpickling.

    Zip files (torch >= 1.6) hold one `*/data.pkl`; the legacy format is a few pickles in a row. torch's
    own rebuild functions and storages are left out, so what remains is code the pickle would import.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            data = z.read(name) if name else b""
    else:
        data = path.read_bytes()
    stream, names = io.BytesIO(data), []
    for _ in range(max_pickles):
        memo, recent = {}, []
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "SHORT_BINSTRING", "BINSTRING"):
                    recent.append(arg)
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and recent:
                    memo[arg] = recent[-1]
                elif op.name == "MEMOIZE" and recent:
                    memo[len(memo)] = recent[-1]
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(memo.get(arg), str):
                    recent.append(memo[arg])
                elif op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(recent) >= 2:
                    names.append(f"{recent[-2]}.{recent[-1]}")
        except (ValueError, EOFError, UnicodeDecodeError):
            break
        if stream.tell() >= len(data):
            break
    return sorted({n for n in names if not n.startswith(("torch.", "collections.OrderedDict", "_codecs.encode"))})


def _pickle_refusal(path: Path, error: pickle.UnpicklingError) -> InteropError:
    """InteropError for a file torch.load(weights_only=True) refused: say that it holds code, or that it is damaged.

    torch words the refusal differently across versions ("Unsupported global: GLOBAL x", "unsupported
    GLOBAL x whose module x is blocked"); when neither names the import, the pickle's opcodes do.
    """
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = [found.group(1)] if found else []
    if not what:
        try:
            what = pickled_globals(path)
        except (OSError, zipfile.BadZipFile, KeyError):
            what = []
    if not what:
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(error), re.S)
        return InteropError(f"{path} is not a readable torch.save file (truncated, corrupt, or another format)"
                            + (f": {cli.one_line(detail.group(1))}" if detail else ""))
    what_s = ", ".join(what)
    hint = ("It holds an argparse.Namespace (DiT's train.py saves its `args` that way): pass "
            "allow_namespace=True (command line: --allow-namespace) to allow exactly that class, which "
            "only carries attribute values and runs no code." if what == ["argparse.Namespace"] else
            "If you trust the file, load it yourself with torch.load(path, weights_only=False) and pass "
            "its 'ema' or 'model' state dict to import_state_dict(), or re-save only the tensors.")
    holds = "contains" if what == ["argparse.Namespace"] else "holds code: it contains"
    return InteropError(f"{path} {holds} a pickled Python object ({what_s}) that "
                        f"torch.load(weights_only=True) refuses to build, because unpickling arbitrary objects can run "
                        f"arbitrary code. {hint}")


def read_torch_file(path: str | Path, *, allow_namespace: bool = False):
    """`torch.load(path, map_location="cpu", weights_only=True)`, with a clear error for pickled objects."""
    path = Path(path)
    if not path.is_file():
        raise InteropError(f"{path} does not exist")
    try:
        if allow_namespace:
            if not hasattr(torch.serialization, "safe_globals"):
                raise InteropError("allow_namespace needs torch >= 2.5 (torch.serialization.safe_globals)")
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _pickle_refusal(path, e) from e
    except SafetensorError as e:  # torch.load reads .safetensors files itself (torch >= 2.13)
        raise InteropError(f"{path} is not a readable safetensors file (truncated or corrupt): "
                           f"{cli.one_line(e)}") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise InteropError(f"{path} is not a readable torch.save file (truncated, corrupt, or another format): "
                           f"{cli.one_line(e)}") from e


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (`module.` from DDP, `_orig_mod.` from torch.compile) from every key."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def split_checkpoint(obj, weights: str = "ema") -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(state dict, args as a dict, facts) from a loaded checkpoint dict or a bare state dict.

    weights: "ema" (what DiT and FPDM sample with) or "model"; a bare state dict is used as is.
    """
    if weights not in WEIGHTS:
        raise InteropError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if not isinstance(obj, dict) or not obj:
        raise InteropError(f"expected a checkpoint dict or a state dict, got {type(obj).__name__}")
    facts: dict = {}
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, args, facts["weights"] = obj, {}, "bare state dict"
    else:
        if weights not in obj or not isinstance(obj[weights], dict):
            have = sorted(k for k, v in obj.items() if isinstance(v, dict))
            raise InteropError(f"the checkpoint has no {weights!r} state dict (it has {have}); try weights="
                               f"{'model' if weights == 'ema' else 'ema'!r}")
        state, facts["weights"] = obj[weights], weights
        raw = obj.get("args")
        args = vars(raw) if isinstance(raw, argparse.Namespace) else dict(raw or {})
        if "train_steps" in obj:
            facts["train_steps"] = int(obj["train_steps"])
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InteropError(f"state dict entries that are not tensors: {bad[:5]}")
    return strip_prefixes(state), args, facts


# ----------------------------------------------------------------------------- shapes -> config
def _indices(state: dict, prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pat.match(k))})


def _heads(hidden: int, args: dict, num_heads: int | None) -> int:
    if num_heads is not None:
        return num_heads
    m = DIT_MODEL_NAME.match(str(args.get("model", "")))
    if m:
        return DIT_NAME_HEADS[m.group(1)]
    if hidden in DIT_HEADS:
        return DIT_HEADS[hidden]
    raise InteropError(f"cannot tell the number of attention heads of hidden size {hidden} from the weights: "
                       f"pass num_heads (--num-heads)")


def infer_config(state: dict[str, torch.Tensor], *, args: dict | None = None, num_heads: int | None = None,
                 timestep_cond_pre_post: bool | None = None, learn_sigma: bool | None = None) -> ModelConfig:
    """The ModelConfig a DiT / FPDM state dict (their names) was built with.

    Shapes give hidden size, patch size, input channels, token grid, depths, MLP ratio, classes and
    whether sigma is learned. Heads and the FPDM pre/post timestep-conditioning flag are not in
    the weights: they come from the arguments, else from the file's `args`, else (heads only) from
    DiT's presets by hidden size. learn_sigma: None keeps what the file has; False drops the sigma
    channels (import_state_dict slices them off); True insists that the file has them.
    """
    args = args or {}
    need = ["x_embedder.proj.weight", "t_embedder.mlp.0.weight", "y_embedder.embedding_table.weight",
            "final_layer.linear.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        extra = (" (a continuous label embedder, `y_embedder.embedding_projection`, is not supported)"
                 if "y_embedder.embedding_projection.weight" in state else "")
        raise InteropError(f"not a DiT/FPDM state dict: missing {missing}{extra}")
    w = _shape_of(state, "x_embedder.proj.weight", 4)  # (D, C, p, p)
    if w[2] != w[3]:
        raise InteropError(f"x_embedder.proj.weight should be (D, C, p, p), got {w}")
    hidden, in_ch, patch = w[0], w[1], w[2]
    if _shape_of(state, "t_embedder.mlp.0.weight", 2)[1] != 256:
        raise InteropError(f"timestep frequency size {state['t_embedder.mlp.0.weight'].shape[1]} is not 256")
    if "pos_embed" not in state:
        raise InteropError("the state dict has no pos_embed, so the token grid (input size) is unknown")
    tokens = state["pos_embed"].shape[-2] if state["pos_embed"].dim() == 3 else 0
    if tuple(state["pos_embed"].shape) != (1, tokens, hidden):
        raise InteropError(f"pos_embed should be (1, tokens, {hidden}) for hidden size {hidden}, "
                           f"got {tuple(state['pos_embed'].shape)}")
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise InteropError(f"pos_embed has {tokens} tokens, not a square grid")
    out_rows = _shape_of(state, "final_layer.linear.weight", 2)[0]
    if out_rows % (patch * patch):
        raise InteropError(f"final_layer.linear has {out_rows} rows, not a multiple of patch^2 = {patch * patch}")
    out_ch = out_rows // (patch * patch)
    if out_ch not in (in_ch, 2 * in_ch):
        raise InteropError(f"{out_ch} output channels for {in_ch} input channels (expected {in_ch} or {2 * in_ch})")
    has_sigma = out_ch == 2 * in_ch
    if learn_sigma and not has_sigma:
        raise InteropError("learn_sigma=True but the file has no sigma channels")
    fpdm = any(k.startswith("block_fixed_point.") for k in state)
    block0 = "block_fixed_point" if fpdm else "blocks.0"
    if f"{block0}.mlp.fc1.weight" not in state:
        raise InteropError(f"no {block0}.mlp.fc1.weight: not a DiT/FPDM state dict (or zero blocks)")
    mlp_ratio = _shape_of(state, f"{block0}.mlp.fc1.weight", 2)[0] / hidden
    common = dict(input_size=grid * patch, in_channels=in_ch, patch_size=patch, hidden_size=hidden,
                  num_heads=_heads(hidden, args, num_heads), mlp_ratio=mlp_ratio,
                  num_classes=_shape_of(state, "y_embedder.embedding_table.weight", 2)[0] - 1,  # last row: null class
                  learn_sigma=has_sigma if learn_sigma is None else learn_sigma)
    if args.get("unsupervised"):
        common["class_dropout"] = 0.0
    if not fpdm:
        return _config(kind="dit", depth=len(_indices(state, "blocks")), **common)
    from_args = args.get(PPTC_ARG)
    if timestep_cond_pre_post is None:
        if from_args is None:
            raise InteropError(
                f"FPDM's pre/post timestep-conditioning flag is not stored in the weights and this file has no "
                f"args.{PPTC_ARG}: pass timestep_cond_pre_post=True/False (--timestep-cond-pre-post true|false) as "
                f"the model was TRAINED (the authors' train.py defaults to False, their model class to True)")
        timestep_cond_pre_post = bool(from_args)
    elif from_args is not None and bool(from_args) != timestep_cond_pre_post:
        raise InteropError(f"timestep_cond_pre_post={timestep_cond_pre_post} contradicts the file's args.{PPTC_ARG}"
                           f"={from_args}; the flag must match how the model was trained")
    return _config(kind="fpdm", pre_depth=len(_indices(state, "blocks_pre")),
                   post_depth=len(_indices(state, "blocks_post")),
                   timestep_cond_pre_post=timestep_cond_pre_post, **common)


def _shape_of(state: dict[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    """The shape of state[key], which must be an `ndim`-D tensor with no empty dimension."""
    shape = tuple(state[key].shape)
    if len(shape) != ndim or 0 in shape:
        raise InteropError(f"{key} should be a {ndim}-D tensor with no empty dimension, got shape {shape}")
    return shape


def _config(**fields) -> ModelConfig:
    """ModelConfig(**fields), its refusal (a field beyond the kit's limits, say) as an InteropError."""
    try:
        return ModelConfig(**fields)
    except ValueError as e:
        raise InteropError(f"the weights describe a model this kit does not support: {e}") from e


def _check_shapes(state: dict[str, torch.Tensor], config: ModelConfig) -> None:
    """Every tensor the config needs is in `state` with its shape, and nothing else (meta build, no allocation)."""
    problem = shape_mismatch(expected_shapes(config), {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise InteropError(f"the weights do not fit the inferred {config.kind} config: {problem}")


def _sigma_rows(t: torch.Tensor, patch: int, keep: int) -> torch.Tensor:
    """Rows of final_layer.linear (p*p*C_out, ...) ordered (p, p, C_out): keep the first `keep` channels."""
    return t.reshape(patch * patch, -1, *t.shape[1:])[:, :keep].reshape(-1, *t.shape[1:])


# ----------------------------------------------------------------------------- import / export
def import_state_dict(state: dict[str, torch.Tensor], *, args: dict | None = None, num_heads: int | None = None,
                      timestep_cond_pre_post: bool | None = None, learn_sigma: bool | None = None,
                      dtype: torch.dtype = torch.float32) -> tuple[DiT | FPDM, dict]:
    """A kit model holding the weights of a DiT / FPDM state dict (their layout), and a dict of facts.

    See `infer_config` for the arguments. Facts: the config, whether sigma channels were dropped,
    how far the stored pos_embed is from the kit's sin-cos table, and warnings about training
    settings in `args` that this kit's sampler does not reproduce (flow matching, zero-SNR), and the
    diffusion process they imply (`predict_v` -> v-prediction), which `interop import` saves with the weights.
    """
    state = strip_prefixes(state)
    config = infer_config(state, args=args, num_heads=num_heads, timestep_cond_pre_post=timestep_cond_pre_post,
                          learn_sigma=learn_sigma)
    file_out = state["final_layer.linear.weight"].shape[0] // config.patch_size ** 2
    _check_shapes(state, replace(config, learn_sigma=file_out == 2 * config.in_channels))  # as the file holds it
    state = {k: v.to(dtype, copy=True) if v.is_floating_point() else v.clone() for k, v in state.items()}
    dropped = file_out != config.out_channels
    if dropped:
        for k in ("final_layer.linear.weight", "final_layer.linear.bias"):
            state[k] = _sigma_rows(state[k], config.patch_size, config.out_channels)
    with torch.device("meta"):  # no allocation or initialisation: every tensor comes from `state`
        model = build_model(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise InteropError(f"the weights do not fit the inferred {config.kind} config {config.to_dict()}: "
                           f"{cli.one_line(e)}") from e
    grid = config.input_size // config.patch_size
    ours = torch.from_numpy(sincos_pos_embed_2d(config.hidden_size, grid)).float()
    args = args or {}
    warnings = [f"trained with {k}=True: this kit samples epsilon-prediction DDPM/DDIM, results will be wrong"
                for k in ("flow", "use_zero_terminal_snr") if args.get(k)]
    diffusion = DiffusionConfig(prediction="v" if args.get("predict_v") else "epsilon")
    facts = {"config": config.to_dict(), "diffusion": diffusion.to_dict(), "dropped_sigma_channels": dropped,
             "pos_embed_max_abs_diff": float((state["pos_embed"].float().reshape(-1, config.hidden_size) - ours)
                                             .abs().max()),
             "warnings": warnings}
    return model.eval(), facts


def import_checkpoint(path: str | Path, *, weights: str = "ema", allow_namespace: bool = False,
                      **kwargs) -> tuple[DiT | FPDM, dict]:
    """Read a DiT / authors' FPDM `.pt` file (checkpoint dict or bare state dict) into a kit model.

    kwargs go to `import_state_dict` (num_heads, timestep_cond_pre_post, learn_sigma, dtype).
    """
    state, args, facts = split_checkpoint(read_torch_file(path, allow_namespace=allow_namespace), weights)
    model, more = import_state_dict(state, args=args, **kwargs)
    return model, {**facts, **more, "args": {k: v for k, v in args.items() if isinstance(v, (str, int, float, bool))}}


def export_state_dict(model: DiT | FPDM, *, pad_sigma: bool = False) -> dict[str, torch.Tensor]:
    """The model's weights in DiT / authors' layout (copies, CPU).

    pad_sigma: for a model without learned sigma, add zero sigma channels so that code building
    the model with learn_sigma=True (both DiT's and the authors' default) can load it; their
    samplers then use the variance halfway between beta_t and the posterior variance (logit 0).
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    c = model.config
    if pad_sigma and not c.learn_sigma:
        p2, C = c.patch_size ** 2, c.in_channels
        for k in ("final_layer.linear.weight", "final_layer.linear.bias"):
            t = state[k].reshape(p2, C, *state[k].shape[1:])
            state[k] = torch.cat([t, torch.zeros_like(t)], dim=1).reshape(p2 * 2 * C, *t.shape[2:])
    return state


def their_args(config: ModelConfig, diffusion: DiffusionConfig = DiffusionConfig()) -> dict:
    """The authors' train/sample arguments that rebuild `config` (and `predict_v`) in their code (a plain dict).

    Their code always uses DiT's linear schedule with 1000 steps: `interop export` refuses another process.
    """
    c = config
    name = next((f"DiT-{n}/{c.patch_size}" for n, (d, h) in
                 {"XL": (1152, 16), "L": (1024, 16), "B": (768, 12), "S": (384, 6)}.items()
                 if (c.hidden_size, c.num_heads) == (d, h)), None)
    out = {"model": name, "num_classes": c.num_classes, "image_size": c.input_size * 8,
           "fixed_point": c.kind == "fpdm", "flow": False, "predict_v": diffusion.prediction == "v"}
    if c.kind == "fpdm":
        out.update({"fixed_point_pre_depth": c.pre_depth, "fixed_point_post_depth": c.post_depth,
                    PPTC_ARG: c.timestep_cond_pre_post})
    return out


def export_checkpoint(path: str | Path, model: DiT | FPDM, *, ema: DiT | FPDM | None = None, pad_sigma: bool = False,
                      train_steps: int | None = None, diffusion: DiffusionConfig = DiffusionConfig()) -> dict:
    """Write `{"model", "ema", "args", "train_steps"}` with torch.save; only tensors and plain values.

    DiT's `find_model` and the authors' sample.py read the "ema" entry. `args` is a plain dict of
    their argument names (see `their_args`), so the file loads with weights_only=True.
    """
    ckpt = {"model": export_state_dict(model, pad_sigma=pad_sigma),
            "ema": export_state_dict(ema if ema is not None else model, pad_sigma=pad_sigma),
            "args": their_args(model.config, diffusion)}
    if train_steps is not None:
        ckpt["train_steps"] = int(train_steps)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return ckpt


# ----------------------------------------------------------------------------- command line
def _bool(s: str) -> bool:
    if s.lower() in ("true", "1", "yes"):
        return True
    if s.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m fpdm_core.interop", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("import", help="DiT / authors' FPDM .pt -> this kit's safetensors checkpoint")
    i.add_argument("path")
    i.add_argument("--out", required=True, help="checkpoint .safetensors to write")
    i.add_argument("--weights", default="ema", choices=WEIGHTS, help="which state dict of a training checkpoint")
    i.add_argument("--timestep-cond-pre-post", type=_bool, default=None, metavar="true|false",
                   help="FPDM: as the model was trained (default: the file's args; required when it has none)")
    i.add_argument("--num-heads", type=cli.int_in(1, LIMITS["num_heads"]), default=None,
                   help="default: from args.model or DiT's presets")
    i.add_argument("--drop-sigma", action="store_true", help="drop the learned-sigma output channels")
    i.add_argument("--allow-namespace", action="store_true", help="allow an argparse.Namespace `args` (DiT's files)")
    e = sub.add_parser("export", help="this kit's checkpoint -> a .pt for DiT's / the authors' code")
    e.add_argument("path")
    e.add_argument("--out", required=True, help=".pt file to write")
    e.add_argument("--pad-sigma", action="store_true", help="add zero sigma channels (their default learn_sigma=True)")
    for s in (i, e):
        s.add_argument("--force", action="store_true", help="replace --out if it exists")
    a = p.parse_args(argv)
    try:
        cli.check_output_file(a.out, force=a.force, sources=[a.path])
        if a.command == "import":
            model, facts = import_checkpoint(a.path, weights=a.weights, allow_namespace=a.allow_namespace,
                                             num_heads=a.num_heads, timestep_cond_pre_post=a.timestep_cond_pre_post,
                                             learn_sigma=False if a.drop_sigma else None)
            meta = {"imported": {k: v for k, v in facts.items() if k not in ("config", "diffusion")}}
            save_checkpoint(a.out, model=model, diffusion=DiffusionConfig.from_dict(facts["diffusion"]), meta=meta)
            for w in facts["warnings"]:
                print(f"warning: {w}", file=sys.stderr)
            print(f"wrote {a.out}: {model.config.kind} {model.config.to_dict()}")
        else:
            ckpt = load_checkpoint(a.path)
            diffusion = stored_diffusion(ckpt.meta)
            if (diffusion.beta_schedule, diffusion.num_timesteps) != ("linear", 1000):
                raise InteropError(f"{a.path} was trained with a {diffusion.beta_schedule} schedule over "
                                   f"{diffusion.num_timesteps} timesteps; DiT's and the authors' code sample with "
                                   f"linear over 1000 only")
            model, ema = build_model(ckpt.model_config), build_model(ckpt.model_config)
            model.load_state_dict({k: v.float() for k, v in ckpt.group("model").items()})
            ema.load_state_dict({k: v.float() for k, v in (ckpt.group("ema") or ckpt.group("model")).items()})
            export_checkpoint(a.out, model, ema=ema, pad_sigma=a.pad_sigma, train_steps=ckpt.meta.get("step"),
                              diffusion=diffusion)
            print(f"wrote {a.out}; their arguments: {their_args(model.config, diffusion)}")
    except (InteropError, CheckpointError, cli.OutputError, OSError) as err:
        return cli.fail(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
