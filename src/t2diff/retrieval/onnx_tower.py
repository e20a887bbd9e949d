"""ONNX export of the user tower, and an onnxruntime :class:`UserTower` for serving.

``user_tower.onnx`` maps the serving batch to user vectors::

    seq          int64 [B, L]  internal item ids, left-padded with 0, most recent last (L = data.max_len)
    seq_time     int64 [B, L]  unix seconds per behaviour, 0 = unknown   } only where the model reads time
    target_time  int64 [B]     unix seconds of the request, 0 = unknown  } (DataInfo.has_time and it uses it)
    -> user      float32 [B, D]

B is dynamic. The user and target inputs of a Batch are 0 as at serving (``Batch.from_histories``). The item
tower's output is ``items.npy`` of the export (item vectors do not depend on the user), so there is no item
graph. For T2Diff the graph unrolls the reverse chain's steps (``T2Diff.reverse_steps``), keyed noise included.

Exporter: the TorchScript one (``torch.onnx.export(dynamo=False)``). The dynamo exporter also gives exact graphs
but took 6x longer on a 5-step T2Diff (about 45 s vs 8 s); the TorchScript tracer simply unrolls the chain
loop. Two of its symbolics do not fit the integer hash of ``diffusion.keyed_noise`` and are replaced during
the export only (:func:`_hash_symbolics`, which also covers the in-place ``&=`` of ``data.sessions``):

- ``^`` on integers is refused (bool only) -> ONNX BitwiseXor (opset 18);
- ``>>`` becomes Div by 2^k, which truncates toward 0 where ``>>`` floors: wrong for the negative int32 bit
  patterns of ``mix32_i32`` -> exact floor division ``(x - Mod(x, 2^k)) / 2^k``.

The wrapping int32 multiplications of ``mix32_i32`` are a plain ONNX int32 Mul; onnxruntime's CPU kernel wraps
modulo 2^32 like PyTorch's (bit-identical hashes, tests/test_onnx.py), so no int64 rewrite is needed. The ONNX
spec leaves integer overflow undefined, so another runtime could differ: the check at export and the probe at
load (:func:`load_onnx_tower`) would then fail instead of serving other noise. The Gaussian
noise after Box-Muller differs by an ulp or so (float32 log / cos implementations differ). onnxruntime has no
bool EyeLike kernel (``torch.eye(dtype=bool)`` in the attention masks): :func:`_float_eyelike` rewrites those
nodes to EyeLike on float + Cast.

Every export is checked: onnxruntime and PyTorch on real test histories must agree within ``atol``
(max abs difference), else the export fails (:func:`check_parity`).
"""

from __future__ import annotations

import importlib
import inspect
import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from t2diff.batch import Batch
from t2diff.data.prepare import sha256
from t2diff.retrieval.user_tower import UserTower

ONNX_FILE = "user_tower.onnx"
OPSET = 18  # BitwiseXor / BitwiseAnd need opset 18
TIME_INPUTS = ("seq_time", "target_time")
OUTPUT = "user"
DEFAULT_ATOL = 1e-5


class OnnxError(ValueError):
    """ONNX export or loading failed (missing package, unexportable model, runtimes disagree, stale file)."""


def require(name: str) -> Any:
    """Import onnx / onnxruntime lazily, with an install hint instead of a bare ImportError."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise OnnxError(f"the ONNX user tower needs the {name!r} package ({e}); install it with "
                        "pip install 'onnx>=1.17' 'onnxruntime>=1.19' (or the t2diff[serve] extra)") from None


def serving_batch(seq: Tensor, seq_time: Tensor | None = None, target_time: Tensor | None = None) -> Batch:
    """The Batch ``Batch.from_histories`` builds, from padded tensors: seq [B, L]; times default to 0."""
    st = seq_time if seq_time is not None else torch.zeros_like(seq)
    tt = target_time if target_time is not None else torch.zeros_like(seq[:, 0])
    pos = torch.cat([seq[:, 1:] * (seq[:, :-1] > 0).long(), torch.zeros_like(seq[:, :1])], dim=1)  # [B, L]
    zeros = torch.zeros_like(seq[:, 0])  # [B]: user and target are unknown at serving time
    return Batch(seq=seq, target=zeros, pos_targets=pos, seq_time=st, target_time=tt, user=zeros)


class _TowerGraph(nn.Module):
    """What the ONNX graph computes: the model's user tower on a serving batch."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, seq: Tensor, seq_time: Tensor | None = None, target_time: Tensor | None = None) -> Tensor:
        return self.model.user_embeddings(serving_batch(seq, seq_time, target_time))  # [B, D]


# ---- exporter fixes ------------------------------------------------------------------------------------
_ONNX_TYPES = {"Bool": 9, "Byte": 2, "Char": 3, "Short": 5, "Int": 6, "Long": 7}  # TorchScript -> TensorProto


def _scalar_type(v: Any) -> str | None:
    try:
        return v.type().scalarType()
    except RuntimeError:
        return None


def _same_type(g: Any, a: Any, b: Any) -> tuple[Any, Any, str | None]:
    """Cast a 0-dim operand to the other's type (torch keeps the tensor's int type against a scalar)."""
    ta, tb = _scalar_type(a), _scalar_type(b)
    if ta == tb or ta is None or tb is None:
        return a, b, ta
    if b.type().dim() == 0 or a.type().dim() != 0:
        return a, g.op("Cast", b, to_i=_ONNX_TYPES[ta]), ta
    return g.op("Cast", a, to_i=_ONNX_TYPES[tb]), b, tb


def _xor(g: Any, a: Any, b: Any) -> Any:
    a, b, t = _same_type(g, a, b)
    return g.op("Xor" if t == "Bool" else "BitwiseXor", a, b)


def _and(g: Any, a: Any, b: Any) -> Any:
    a, b, t = _same_type(g, a, b)
    return g.op("And" if t == "Bool" else "BitwiseAnd", a, b)


def _rshift(g: Any, a: Any, b: Any) -> Any:
    a, b, t = _same_type(g, a, b)
    if t == "Byte":
        return g.op("BitShift", a, b, direction_s="RIGHT")
    two = g.op("Constant", value_t=torch.tensor(2.0, dtype=torch.float64))
    p = g.op("Cast", g.op("Pow", two, g.op("Cast", b, to_i=11)), to_i=_ONNX_TYPES[t])  # 2^k, exact in float64
    # x >> k = floor(x / 2^k); ONNX integer Div truncates, so drop the floor remainder (Mod, fmod=0) first
    return g.op("Div", g.op("Sub", a, g.op("Mod", a, p, fmod_i=0)), p)


# the in-place forms are traced as such (``mask &= ...`` in data.sessions) and have no symbolic of their own
_SYMBOLICS = {"aten::__xor_": _xor, "aten::bitwise_xor": _xor, "aten::__ixor_": _xor, "aten::__iand_": _and,
              "aten::__rshift_": _rshift, "aten::bitwise_right_shift": _rshift}


@contextmanager
def _hash_symbolics(opset: int) -> Iterator[None]:
    """Integer xor / arithmetic right shift symbolics for the TorchScript exporter, for one export only."""
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic

    for name, fn in _SYMBOLICS.items():
        register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in _SYMBOLICS:
            unregister_custom_op_symbolic(name, opset)


def _float_eyelike(proto: Any) -> int:
    """Rewrite EyeLike nodes on bool (no onnxruntime kernel) to Cast -> EyeLike(float) -> Cast. Returns how many."""
    onnx = require("onnx")
    from onnx import TensorProto, helper

    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    nodes = []
    fixed = 0
    for nd in proto.graph.node:
        dtype = next((a.i for a in nd.attribute if a.name == "dtype"), None)
        if nd.op_type != "EyeLike" or TensorProto.BOOL not in (dtype, types.get(nd.input[0])):
            nodes.append(nd)
            continue
        out_type = dtype if dtype is not None else TensorProto.BOOL
        x, y = nd.input[0], nd.output[0]
        nodes += [helper.make_node("Cast", [x], [f"{y}/float_in"], to=TensorProto.FLOAT, name=f"{nd.name}/cast_in"),
                  helper.make_node("EyeLike", [f"{y}/float_in"], [f"{y}/float"], dtype=TensorProto.FLOAT,
                                   name=nd.name, **{a.name: helper.get_attribute_value(a) for a in nd.attribute
                                                    if a.name != "dtype"}),
                  helper.make_node("Cast", [f"{y}/float"], [y], to=out_type, name=f"{nd.name}/cast_out")]
        fixed += 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return fixed


# ---- sessions and parity ---------------------------------------------------------------------------------
def make_session(path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (1 by default, as the service pins
    PyTorch to 1 thread: concurrency comes from requests, not from splitting one small request)."""
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_session(session: Any, batch: Batch) -> np.ndarray:
    """User vectors [B, D] float32 of a serving Batch; feeds only the inputs the graph declares."""
    feed = {i.name: getattr(batch, i.name).cpu().numpy().astype(np.int64, copy=False) for i in session.get_inputs()}
    return session.run([OUTPUT], feed)[0]


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def check_parity(session: Any, tower: UserTower, batches: list[Batch], atol: float) -> dict[str, Any]:
    """Max abs difference between onnxruntime and PyTorch user vectors on ``batches``; OnnxError beyond atol
    (NaN counts as a mismatch)."""
    diffs = []
    for b in batches:
        ref = UserTower.embed_batch(tower, b)  # PyTorch, whatever runtime ``tower`` itself uses
        out = run_session(session, b)
        if out.shape != ref.shape:
            raise OnnxError(f"{tower.model_name}: onnxruntime returned shape {out.shape}, PyTorch {ref.shape}")
        diffs.append(_max_diff(out, ref))
    worst = max(diffs)
    rows = sum(len(b) for b in batches)
    if not worst <= atol:
        raise OnnxError(f"{tower.model_name}: onnxruntime's user vectors differ from PyTorch's by {worst:.3g} "
                        f"(max abs) on {rows} histories (batches of {[len(b) for b in batches]}), more than "
                        f"{atol:g}: this ONNX export is not faithful; serve with the torch runtime")
    return {"max_abs_diff": worst, "atol": atol, "rows": rows, "batch_sizes": [len(b) for b in batches]}



# ---- export ----------------------------------------------------------------------------------------------
def _check_exportable(tower: UserTower) -> None:
    diffusion = getattr(tower.model.cfg, "diffusion", None)
    if getattr(diffusion, "enabled", False) and diffusion.eval_seed is None:
        raise OnnxError(f"{tower.model_name}: model.diffusion.eval_seed is None, so the reverse chain draws its "
                        "noise from the global RNG and a user's vector is not a function of the history; there is no "
                        "deterministic graph to export (retrain or load with an eval_seed)")


def export_user_tower(tower: UserTower, out_dir: str | Path, sample: Batch, *, atol: float = DEFAULT_ATOL,
                      opset: int = OPSET, log: Any = print) -> dict[str, Any]:
    """Write ``out_dir/user_tower.onnx`` for ``tower``'s model and check it against PyTorch on the histories of
    ``sample`` (>= 2 real examples; only seq and, where the model reads time, the timestamps are used): the
    whole batch, then its first row alone. Returns export.json's "onnx" entry. The file appears only once the
    check has passed."""
    onnx = require("onnx")
    ort = require("onnxruntime")
    _check_exportable(tower)
    if len(sample) < 2:
        raise OnnxError(f"the ONNX check needs at least 2 histories, got {len(sample)} (--onnx-rows, or the run's "
                        "test examples)")
    out_dir = Path(out_dir)
    path, tmp = out_dir / ONNX_FILE, out_dir / (ONNX_FILE + ".tmp")
    names = ["seq", *TIME_INPUTS] if tower.uses_time else ["seq"]
    inputs = [getattr(sample, n) for n in names]  # without time, serving passes zeros: so does serving_batch
    checked = [serving_batch(*inputs), serving_batch(*(x[:1] for x in inputs))]  # the batch, then one row
    graph = _TowerGraph(tower.model).eval()
    # trace on 2 rows (not 1: a batch of one would let broadcasts specialise the batch axis)
    example = tuple(x[:2] for x in inputs)
    # torch >= 2.9 defaults to the dynamo exporter; older versions have no such argument and only this one
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    t0 = time.perf_counter()
    try:
        with _hash_symbolics(opset), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer notices
            torch.onnx.export(graph, example, str(tmp), opset_version=opset, input_names=names,
                              output_names=[OUTPUT], dynamic_axes={n: {0: "batch"} for n in [*names, OUTPUT]},
                              do_constant_folding=True, **legacy)
        proto = onnx.load(str(tmp))
        _float_eyelike(proto)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        export_s = time.perf_counter() - t0
        session = make_session(tmp)
        check = check_parity(session, tower, checked, atol)
        tmp.replace(path)
    except OnnxError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as e:  # the exporter's own errors: name the model and what failed
        tmp.unlink(missing_ok=True)
        raise OnnxError(f"{tower.model_name}: ONNX export failed ({type(e).__name__}: {str(e)[:500]})") from e
    declared = [{"name": i.name, "dtype": "int64", "shape": ["batch", *i.shape[1:]]} for i in session.get_inputs()]
    dim = session.get_outputs()[0].shape[1]
    log(f"wrote {ONNX_FILE} (opset {opset}, inputs {[i['name'] for i in declared]}) in {export_s:.1f}s; "
        f"onnxruntime vs PyTorch max abs diff {check['max_abs_diff']:.3g} on {check['rows']} histories")
    steps = getattr(tower.model, "reverse_steps", None)
    return {
        "file": ONNX_FILE,
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=False) (TorchScript tracer)",
        "inputs": declared,
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", dim]},
        "diffusion_steps": steps,
        "item_tower": "items.npy (the item tower's output for internal ids 1..I)",
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "check": check,
        "export_seconds": round(export_s, 3),
    }


# ---- serving ---------------------------------------------------------------------------------------------
class OnnxUserTower(UserTower):
    """A UserTower whose user vectors come from onnxruntime; ids, padding and time handling are UserTower's.
    The PyTorch model stays loaded for the item embeddings and the load-time check."""

    runtime = "onnx"

    def __init__(self, tower: UserTower, session: Any, meta: dict[str, Any]) -> None:
        super().__init__(tower.model, tower.cfg, tower.data_source(), catalog=tower.catalog,
                         has_time=tower.uses_time, max_len=tower.max_len)
        self.session = session
        self.onnx_meta = meta
        self.dim = int(session.get_outputs()[0].shape[1])

    def embed_batch(self, batch: Batch) -> np.ndarray:  # [B, D] float32
        if len(batch) == 0:  # onnxruntime rejects an empty batch axis
            return np.zeros((0, self.dim), dtype=np.float32)
        return run_session(self.session, batch)


def _probe_batch(tower: UserTower, rows: int = 4) -> Batch:
    """``rows`` seeded random histories of catalogue items (with timestamps where the model reads time), of
    lengths up to max_len: the load-time check needs no dataset."""
    rng = np.random.default_rng(0)
    hists = [rng.integers(1, tower.num_items + 1, size=int(n)).tolist()
             for n in np.linspace(1, tower.max_len, rows).round()]
    times = req = None
    if tower.uses_time:
        times = [np.sort(1_600_000_000 + rng.integers(0, 10**6, size=len(h))).tolist() for h in hists]
        req = [t[-1] + 3600 for t in times]
    return Batch.from_histories(hists, tower.max_len, times, req)


def load_onnx_tower(export_dir: str | Path, tower: UserTower, threads: int = 1, verify: bool = True) -> OnnxUserTower:
    """``tower`` with its user vectors computed by the export's user_tower.onnx (``threads`` intra-op threads).

    Checks the file against export.json's sha256 and, with ``verify``, that it reproduces ``tower``'s PyTorch
    vectors on a few real histories (within the export's atol): an ONNX graph holds its own copy of the weights,
    so this is what ties it to the checkpoint being served."""
    export_dir = Path(export_dir)
    meta = json.loads((export_dir / "export.json").read_text()).get("onnx")
    path = export_dir / ONNX_FILE
    if not meta or not path.is_file():
        raise OnnxError(f"{export_dir} has no ONNX user tower; export it with `t2diff export RUN --out "
                        f"{export_dir} --onnx`")
    if sha256(path) != meta["sha256"]:
        raise OnnxError(f"{path} is not the file export.json describes (sha256 differs); export again")
    onnx_tower = OnnxUserTower(tower, make_session(path, threads), meta)
    if verify:
        probe = _probe_batch(tower)
        diff = _max_diff(onnx_tower.embed_batch(probe), UserTower.embed_batch(tower, probe))
        atol = float(meta.get("check", {}).get("atol", DEFAULT_ATOL))
        if not diff <= atol:
            raise OnnxError(f"{path} does not reproduce this checkpoint's user tower (max abs diff {diff:.3g} > "
                            f"{atol:g} on {len(probe)} histories): it was exported from other weights; export again")
    return onnx_tower
