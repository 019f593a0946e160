"""Training-step and inference speed of a public implementation of one of our models (one JSON object).

    python bench/peers.py --impl openstl|predrnn_pytorch|sa_convlstm_tsugumi --model convlstm|predrnn|sa_convlstm
        --workload W1|W2|R256 [W ...] [--device cpu|cuda] [--precision 32|bf16 [bf16]] [--repeats N] [--threads N]
        [--openstl PATH] [--predrnn-pytorch PATH] [--sa-convlstm PATH]
        [--reverse-scheduled-sampling] [--sa-mode autoregressive|sequences]

The same harness, workload and step as ``bench/models.py`` (``bench/harness.py``), so "theirs / ours" is a
meaningful ratio (several workloads or precisions: one JSON line each, in one process). Their code is
imported from a checkout of theirs, never copied here; by default
``third_party/<name>`` (ignored by git)::

    git clone https://github.com/chengtan9907/OpenSTL third_party/OpenSTL
    git clone https://github.com/thuml/predrnn-pytorch third_party/predrnn-pytorch
    git clone https://github.com/tsugumi-sys/SA-ConvLSTM-Pytorch third_party/SA-ConvLSTM-Pytorch

(or a ``git archive`` export with the commit hash in a file named COMMIT; the JSON reports it). Every forward
runs without teacher forcing and converts to the peer's layout inside, as its own training code does:

- OpenSTL ConvLSTM_Model and PredRNN_Model, predrnn-pytorch's PredRNN ``RNN``: the frames go in as
  [B, T_in + T_out, H/p, W/p, p*p*C] (targets included, as their code wants them, but masked out) with
  ``mask_true`` all zeros for the T_out - 1 steps after the inputs, so every output step reads the previous
  prediction: T_in + T_out - 1 steps. ``--reverse-scheduled-sampling`` runs their reverse-scheduled-sampling
  branch instead (the mask covers every step after the first: 1 for the input steps, 0 for the output steps).
  OpenSTL's ConvLSTM (unlike ours, an encoder-forecaster that never reads a frame back) feeds frames like PredRNN.
- SA-ConvLSTM-Pytorch's SAMSeq2Seq (its self-attention-memory SA-ConvLSTM, like ours): a seq2seq over a window
  of T_in frames, on frames folded into p x p patches. ``autoregressive`` (default; return_sequences=False, the
  way its Evaluator forecasts): T_out calls, each predicting one frame that slides into the window, so
  T_in * T_out steps. ``sequences`` (return_sequences=True): a window maps to T_in frames, fed back as the next
  window until T_out are out, T_in * ceil(T_out / T_in) steps. Its layer norms are part of the seq2seq.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from harness import WORKLOADS, Forward, Workload, environment, measure, set_threads, workload_dict

THIRD_PARTY = Path(__file__).resolve().parent.parent / "third_party"
REPOS = {
    "openstl": ("chengtan9907/OpenSTL", "OpenSTL"),
    "predrnn_pytorch": ("thuml/predrnn-pytorch", "predrnn-pytorch"),
    "sa_convlstm_tsugumi": ("tsugumi-sys/SA-ConvLSTM-Pytorch", "SA-ConvLSTM-Pytorch"),
}
MISSING = {
    ("openstl", "sa_convlstm"): "OpenSTL has no SA-ConvLSTM (its recurrent models: ConvLSTM, PredRNN, PredRNN++, "
    "PredRNN-V2, MIM, E3D-LSTM, MAU, PhyDNet, SwinLSTM)",
}
#: a few seconds a step on a CPU: proves an adapter runs, times nothing
TINY = Workload("tiny", t_in=3, t_out=4, size=16, batch=2, layers=2, hidden=8)


@dataclass
class Peer:
    module: torch.nn.Module
    forward: Forward
    recurrent_steps: int  # times one forward steps its layer stack
    driver: str


def _load(name: str, path: Path) -> types.ModuleType:
    """Import one of their files by path, under the module name it has in their package."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _repository_root_first(root: Path, *packages: str) -> None:
    """Their scripts run from the repository root and import its top-level packages (``core``...) from there."""
    for name in packages:
        module = sys.modules.get(name)
        where = module and (getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), ""))
        if module is not None and not str(where).startswith(str(root)):  # not theirs (theirs: an earlier workload)
            raise SystemExit(f"peers.py: error: a module named {name!r} is already imported; cannot import theirs")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


def _patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, T, C, H, W] -> [B, T, H/p, W/p, p*p*C], channels ordered as the PredRNN authors' reshape_patch."""
    b, t, c, h, w = x.shape
    return x.reshape(b, t, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 4, 6, 2).reshape(b, t, h // p, w // p, -1)


def _frames(z: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of ``_patches``."""
    b, t, h, w, d = z.shape
    c = d // (p * p)
    return z.reshape(b, t, h, w, p, p, c).permute(0, 1, 6, 2, 4, 3, 5).reshape(b, t, c, h * p, w * p)


def _mask_true(frames: torch.Tensor, w: Workload, reverse: bool) -> torch.Tensor:
    """Their ``mask_true``: 1 where a step reads the true frame, 0 where it reads its previous prediction."""
    if not reverse:  # it covers the steps after the inputs
        return frames.new_zeros(frames.shape[0], w.t_out - 1, *frames.shape[2:])
    mask = frames.new_zeros(frames.shape[0], w.t_in + w.t_out - 2, *frames.shape[2:])  # every step after the first
    mask[:, : w.t_in - 1] = 1.0
    return mask


def _mask_text(reverse: bool) -> str:
    if reverse:
        return "reverse_scheduled_sampling=1, mask_true [B, T_in+T_out-2, ...]: ones for the input steps, zeros after"
    return "reverse_scheduled_sampling=0, mask_true zeros [B, T_out-1, ...]: each output step reads the prediction"


def openstl(root: Path, model: str, w: Workload, device: torch.device, reverse: bool, _mode: str) -> Peer:
    pkg = root / "openstl"
    # openstl/modules/__init__.py imports every model's modules, and through them timm and more; these models
    # need only their cell, so ``openstl.modules`` is registered holding just that, and their files load by path
    for name, path in (("openstl", pkg), ("openstl.modules", pkg / "modules")):
        stub = types.ModuleType(name)
        stub.__path__ = [str(path)]
        sys.modules[name] = stub
    cell, file, cls = {"convlstm": ("ConvLSTMCell", "convlstm", "ConvLSTM_Model"),
                       "predrnn": ("SpatioTemporalLSTMCell", "predrnn", "PredRNN_Model")}[model]
    modules = _load(f"openstl.modules.{file}_modules", pkg / "modules" / f"{file}_modules.py")
    setattr(sys.modules["openstl.modules"], cell, getattr(modules, cell))
    network = getattr(_load(f"openstl.models.{file}_model", pkg / "models" / f"{file}_model.py"), cls)
    utils = _load("openstl.utils.predrnn_utils", pkg / "utils" / "predrnn_utils.py")  # reshape_patch(_back)
    configs = SimpleNamespace(
        in_shape=(w.t_in, w.channels, w.size, w.size), patch_size=w.patch, filter_size=w.kernel, stride=1,
        layer_norm=int(w.layer_norm), pre_seq_length=w.t_in, aft_seq_length=w.t_out, total_length=w.t_in + w.t_out,
        reverse_scheduled_sampling=int(reverse),
    )
    net = network(w.layers, [w.hidden] * w.layers, configs)

    def forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # as OpenSTL's method forward: [B, T, C, H, W] -> [B, T, H, W, C] -> patches, the targets in the tensor
        frames = utils.reshape_patch(torch.cat([x, y], dim=1).permute(0, 1, 3, 4, 2).contiguous(), w.patch)
        out, _ = net(frames, _mask_true(frames, w, reverse), return_loss=False)
        return utils.reshape_patch_back(out[:, -w.t_out :], w.patch).permute(0, 1, 4, 2, 3)

    return Peer(net, forward, w.t_in + w.t_out - 1,
                f"openstl.models.{file}_model.{cls}(frames, mask_true, return_loss=False); {_mask_text(reverse)}")


def predrnn_pytorch(root: Path, model: str, w: Workload, device: torch.device, reverse: bool, _mode: str) -> Peer:
    _repository_root_first(root, "core")
    rnn = importlib.import_module("core.models.predrnn").RNN
    configs = SimpleNamespace(
        patch_size=w.patch, img_channel=w.channels, img_width=w.size, filter_size=w.kernel, stride=1,
        layer_norm=int(w.layer_norm), device=device, input_length=w.t_in, total_length=w.t_in + w.t_out,
        reverse_scheduled_sampling=int(reverse),
    )
    net = rnn(w.layers, [w.hidden] * w.layers, configs)

    def forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # their trainer patches in numpy before the network; the same layout, on the device
        frames = _patches(torch.cat([x, y], dim=1), w.patch)
        out, _ = net(frames, _mask_true(frames, w, reverse))  # it also computes its own MSE: unused here
        return _frames(out[:, -w.t_out :], w.patch)

    text = f"core.models.predrnn.RNN(frames, mask_true); {_mask_text(reverse)}"
    return Peer(net, forward, w.t_in + w.t_out - 1, text)


def sa_convlstm_tsugumi(root: Path, model: str, w: Workload, device: torch.device, _reverse: bool,
                        mode: str) -> Peer:
    _repository_root_first(root, "core", "convlstm", "self_attention_memory_convlstm")
    constants = importlib.import_module("core.constants")
    # its modules read DEVICE (cuda whenever there is one) when they load, to place their states
    constants.DEVICE = str(device)
    seq2seq = importlib.import_module("self_attention_memory_convlstm.seq2seq")
    p, channels, side = w.patch, w.channels * w.patch**2, w.size // w.patch
    net = seq2seq.SAMSeq2Seq(
        attention_hidden_dims=max(w.hidden // 8, 4),  # ours: the SAM key channels
        input_seq_length=w.t_in, num_layers=w.layers, num_kernels=w.hidden,
        return_sequences=mode == "sequences",
        convlstm_params={"in_channels": channels, "out_channels": channels, "kernel_size": (w.kernel, w.kernel),
                         "padding": "same", "activation": "tanh", "frame_size": (side, side),
                         "weights_initializer": constants.WeightsInitializer.He},
    )
    per_call = w.t_in if mode == "sequences" else 1

    def fold(x: torch.Tensor) -> torch.Tensor:  # [B, T, C, H, W] -> [B, C*p*p, T, H/p, W/p]
        return F.pixel_unshuffle(x.flatten(0, 1), p).unflatten(0, x.shape[:2]).transpose(1, 2).contiguous()

    def unfold(z: torch.Tensor) -> torch.Tensor:
        z = z.transpose(1, 2)
        return F.pixel_shuffle(z.flatten(0, 1), p).unflatten(0, z.shape[:2])

    def forward(x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
        window, outputs = fold(x), []
        for _ in range(math.ceil(w.t_out / per_call)):
            outputs.append(net(window))
            window = torch.cat([window, outputs[-1]], dim=2)[:, :, -w.t_in :]  # its predictions, never targets
        return unfold(torch.cat(outputs, dim=2)[:, :, : w.t_out])

    calls = math.ceil(w.t_out / per_call)
    text = (f"self_attention_memory_convlstm.seq2seq.SAMSeq2Seq(window [B, C*p*p, T_in, H/p, W/p]), "
            f"return_sequences={mode == 'sequences'}: {calls} calls of {w.t_in} steps, each window ending in the "
            "previous call's predictions")
    return Peer(net, forward, calls * w.t_in, text)


BUILDERS: dict[str, tuple[Callable[..., Peer], tuple[str, ...]]] = {
    "openstl": (openstl, ("convlstm", "predrnn")),
    "predrnn_pytorch": (predrnn_pytorch, ("predrnn",)),
    "sa_convlstm_tsugumi": (sa_convlstm_tsugumi, ("sa_convlstm",)),
}


def source(impl: str, root: Path) -> dict[str, str]:
    repo, _ = REPOS[impl]
    out = {"repo": repo, "path": str(root)}
    commit = ""
    if (root / ".git").exists():
        run = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = run.stdout.strip() if run.returncode == 0 else ""
    elif (root / "COMMIT").is_file():
        commit = (root / "COMMIT").read_text().strip()
    if commit:
        out["commit"] = commit
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--model", required=True, choices=["convlstm", "predrnn", "sa_convlstm"])
    parser.add_argument("--workload", required=True, nargs="+", choices=sorted(WORKLOADS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default=["32"], nargs="+", choices=["32", "bf16"])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps after 3 warm-ups (median)")
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    for impl, (_, name) in REPOS.items():
        flag = {"sa_convlstm_tsugumi": "--sa-convlstm"}.get(impl, "--" + impl.replace("_", "-"))
        parser.add_argument(flag, dest=impl, type=Path, default=THIRD_PARTY / name, help=f"checkout of {name}")
    parser.add_argument("--reverse-scheduled-sampling", action="store_true",
                        help="OpenSTL / predrnn-pytorch: their reverse-scheduled-sampling branch (same computation)")
    parser.add_argument("--sa-mode", default="autoregressive", choices=["autoregressive", "sequences"],
                        help="SA-ConvLSTM-Pytorch: one frame per call (its Evaluator) or return_sequences=True")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke check of an adapter
    args = parser.parse_args()
    build, models = BUILDERS[args.impl]
    if args.model not in models:
        why = MISSING.get((args.impl, args.model), f"{args.impl} has only {', '.join(models)}")
        pairs = ", ".join(f"{i}/{m}" for i, (_, ms) in BUILDERS.items() for m in ms)
        sys.exit(f"peers.py: error: no {args.model} in {args.impl}: {why}; supported: {pairs}")
    root = getattr(args, args.impl).resolve()
    if not root.is_dir():
        sys.exit(f"peers.py: error: no checkout of {REPOS[args.impl][0]} at {root} (see --help)")
    device = torch.device(args.device)
    set_threads(device, args.threads)
    for name in args.workload:
        workload = TINY if args.tiny else WORKLOADS[name]
        for precision in args.precision:
            torch.manual_seed(0)
            peer = build(root, args.model, workload, device, args.reverse_scheduled_sampling, args.sa_mode)
            recurrent_steps, driver = peer.recurrent_steps, peer.driver
            try:
                result = measure(peer.module, peer.forward, workload, device, precision, args.repeats)
            except Exception as exc:  # out of memory at one workload: report it, measure the others
                print(json.dumps({"model": args.model, "implementation": args.impl, "workload": workload.name,
                                  "precision": precision, "error": f"{type(exc).__name__}: {exc}"[:2000]}), flush=True)
                continue
            finally:
                peer = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            print(json.dumps({"model": args.model, "implementation": args.impl, **result,
                              "workload_spec": workload_dict(workload), "environment": environment(device),
                              "recurrent_steps": recurrent_steps, "driver": driver,
                              "source": source(args.impl, root)}), flush=True)


if __name__ == "__main__":
    main()
