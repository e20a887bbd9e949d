"""T2Diff's nested model config: every legacy flat key (old YAML files, checkpoints, CLI overrides, Python keywords)
maps to the same nested value, the converted configs/ load to exactly their former flat versions, and every
allowed value / cross-field rule is checked with the dotted key in the message."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from t2diff.config import ConfigError, experiment_from_dict, from_dict, load_config, model_config
from t2diff.models.t2diff import (
    LEGACY_KEYS,
    AttentionConfig,
    DiffusionConfig,
    ObjectiveConfig,
    T2Diff,
    T2DiffConfig,
    UNetConfig,
)

REPO = Path(__file__).resolve().parents[1]

# T2DiffConfig's flat fields and defaults before the sections (frozen copy of the flat dataclass)
OLD_DEFAULTS: dict[str, Any] = {
    "hidden": 64, "session_len": 10, "session_gap": None, "dropout": 0.1, "diffusion": True, "drift": True,
    "schedule": "exp", "steps": 50, "beta_a": 0.01, "beta_b": 4.5, "beta_start": None, "beta_end": None,
    "max_beta": 0.999, "reverse_noise": "std", "kl_loss": "mse", "kl_weight": 1.0, "kl_mask_padding": True,
    "kl_positions": "all", "detach_xhat": True, "eval_seed": 0, "unet_levels": 4, "unet_base_channels": 0,
    "unet_channel_mult": 2, "unet_convs_per_level": 1, "unet_padding": "reflect", "unet_time_emb": "sinusoidal",
    "unet_final_proj": True, "num_heads": 2, "session_layers": 1, "session_ffn_dim": 256, "session_mask_diag": False,
    "session_pos_emb": False, "din_hidden": 64, "use_time": True, "time_buckets": 32, "time_emb_dim": 16,
    "user_ffn": True, "user_ffn_hidden": 256, "use_item_features": True, "item_mlp_hidden": 128,
}
# a valid non-default value for each legacy key
OTHER: dict[str, Any] = {
    "session_len": 7, "session_gap": 3600, "dropout": 0.25, "diffusion": False, "drift": False, "schedule": "linear",
    "steps": 10, "beta_a": 0.02, "beta_b": 3.0, "beta_start": 0.001, "beta_end": 0.05, "max_beta": 0.9,
    "reverse_noise": "var", "kl_loss": "l2", "kl_weight": 0.1, "kl_mask_padding": False, "kl_positions": "last",
    "detach_xhat": False, "eval_seed": None, "unet_levels": 3, "unet_base_channels": 32, "unet_channel_mult": 1,
    "unet_convs_per_level": 2, "unet_padding": "zeros", "unet_time_emb": "authors", "unet_final_proj": False,
    "num_heads": 4, "session_layers": 2, "session_ffn_dim": 64, "session_mask_diag": True, "session_pos_emb": True,
    "din_hidden": 32, "use_time": False, "time_buckets": 16, "time_emb_dim": 8, "user_ffn": False,
    "user_ffn_hidden": 128, "use_item_features": False, "item_mlp_hidden": 64,
}


def _nested(cfg: T2DiffConfig, old: str) -> Any:
    sec, key = LEGACY_KEYS[old]
    return getattr(getattr(cfg, sec), key)


def _load(*overrides: str, path: Path | None = None) -> T2DiffConfig:
    """The model config the loader builds (config.model_config calls T2Diff.upgrade_config)."""
    return model_config(load_config(path, ["model.name=t2diff", *overrides] if path is None else list(overrides)))


def test_legacy_keys_cover_every_old_field_with_the_same_default() -> None:
    assert set(LEGACY_KEYS) == set(OLD_DEFAULTS) - {"hidden"} == set(OTHER)
    new = T2DiffConfig()
    assert new.hidden == OLD_DEFAULTS["hidden"]
    for old, value in OLD_DEFAULTS.items():
        if old != "hidden":
            assert _nested(new, old) == value, old
    # every nested field is reachable from exactly one legacy key (nothing new was added but the sampler and its
    # step count)
    nested = {(f.name, g.name) for f in dataclasses.fields(new) if f.name != "hidden"
              for g in dataclasses.fields(getattr(new, f.name))}
    assert nested - set(LEGACY_KEYS.values()) == {("diffusion", "sampler"), ("diffusion", "inference_steps")}
    assert len(set(LEGACY_KEYS.values())) == len(LEGACY_KEYS)


@pytest.mark.parametrize("old", sorted(OTHER))
def test_each_legacy_key_maps_to_its_nested_value(old: str) -> None:
    sec, key = LEGACY_KEYS[old]
    value = OTHER[old]
    expected = T2DiffConfig(**{sec: {key: value}})
    assert _nested(expected, old) == value
    routes = {
        "python keyword": T2DiffConfig(**{old: value}),
        "dataclasses.replace": dataclasses.replace(T2DiffConfig(), **{old: value}),
        "upgrade_config + from_dict": from_dict(T2DiffConfig, T2Diff.upgrade_config({old: value}), "model"),
        "flat CLI override": _load(f"model.{old}={json.dumps(value)}"),
        "nested CLI override": _load(f"model.{sec}.{key}={json.dumps(value)}"),
    }
    for route, cfg in routes.items():
        assert cfg == expected, route


def test_upgrade_config_rules() -> None:
    up = T2Diff.upgrade_config
    nested = {"name": "t2diff", "hidden": 8, "diffusion": {"steps": 3}, "unet": {"levels": 2}}
    assert up(nested) == nested and up(up({"steps": 3, "drift": False})) == up({"steps": 3, "drift": False})
    assert up({"name": "t2diff", "steps": 3, "unet_levels": 2, "hidden": 8}) == nested
    # model.diffusion=false (a flat bool) and model.diffusion.enabled=false are the same switch
    assert up({"diffusion": False, "steps": 3}) == {"diffusion": {"enabled": False, "steps": 3}}
    assert up({"diffusion": True}) == {"diffusion": {"enabled": True}}
    # a flat key beside its nested counterpart wins: CLI overrides land flat on a nested YAML
    assert up({"diffusion": {"steps": 50, "drift": True}, "steps": 10}) == {"diffusion": {"steps": 10, "drift": True}}
    cfg = T2DiffConfig(diffusion=DiffusionConfig(steps=50, schedule="log"), steps=10)
    assert cfg.diffusion == DiffusionConfig(steps=10, schedule="log")
    assert up({"unet": 3, "unet_levels": 2}) == {"unet": 3}  # left for the loader to reject
    with pytest.raises(ConfigError, match="model.unet: expected a mapping"):
        _load("model.unet=3")


# the T2Diff files under configs/ as they were before the sections (flat model keys), frozen
_OLD_PAPER: dict[str, Any] = {
    "data": {"path": "cache/ml-1m", "protocol": "paper", "max_len": 50, "split_seed": 42, "train_targets": 10},
    "model": {"name": "t2diff", "hidden": 64, "session_len": 10, "dropout": 0.1, "diffusion": True, "drift": True,
              "schedule": "exp", "steps": 50, "beta_a": 0.01, "beta_b": 4.5, "kl_weight": 0.1, "unet_levels": 4,
              "unet_channel_mult": 2, "session_layers": 1, "session_ffn_dim": 64, "num_heads": 2},
    "train": {"epochs": 50, "batch_size": 512, "lr": 0.001, "seed": 2025, "report_max_over_epochs": True},
    "eval": {"ks": [2, 20], "batch_size": 512},
}


def _with(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for name, values in sections.items():
        out[name].update(values)
    return out


OLD_CONFIGS: dict[str, dict[str, Any]] = {
    "ml-1m/t2diff.yaml": _OLD_PAPER,
    "ml-1m/t2diff-wo-dp.yaml": _with(_OLD_PAPER, model={"drift": False}),
    "ml-1m/t2diff-mixed-attention.yaml": _with(_OLD_PAPER, model={"diffusion": False}),
    "ml-1m/t2diff-kl-last.yaml": _with(_OLD_PAPER, model={"kl_positions": "last"}),
    "ml-1m/t2diff-authors.yaml": _with(_OLD_PAPER, model={
        "reverse_noise": "var", "kl_loss": "l2", "kl_mask_padding": False, "unet_time_emb": "authors",
        "unet_final_proj": False, "unet_padding": "zeros", "session_mask_diag": True, "user_ffn": False,
        "detach_xhat": False}),
    "ml-1m/t2diff-loo.yaml": {
        "data": {"path": "cache/ml-1m", "protocol": "loo", "max_len": 50, "train_targets": 10},
        "model": _OLD_PAPER["model"],
        "train": {"epochs": 50, "batch_size": 512, "lr": 0.001, "seed": 2025, "patience": 3,
                  "select_metric": "ndcg@10"},
        "eval": {"ks": [1, 5, 10, 20], "batch_size": 512},
    },
    "kuairand/t2diff.yaml": _with(
        _OLD_PAPER, data={"path": "cache/kuairand"}, model={"kl_weight": 10.0, "use_time": True},
        train={"epochs": 10, "lr": 0.003, "loss": "sampled", "num_negatives": 1024, "negative_sampler": "popularity"},
        eval={"ks": [10, 100]}),
}
PAPER_ROWS = {"ml-1m/t2diff.yaml": "T2Diff", "ml-1m/t2diff-wo-dp.yaml": "W/O DP",
              "ml-1m/t2diff-mixed-attention.yaml": "Mixed-attention", "ml-1m/t2diff-kl-last.yaml": None,
              "ml-1m/t2diff-authors.yaml": "T2Diff", "ml-1m/t2diff-loo.yaml": "T2Diff",
              "kuairand/t2diff.yaml": "T2Diff"}


def test_every_t2diff_config_is_converted() -> None:
    found = {str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("t2diff*.yaml")
             if load_config(p).model["name"] == "t2diff"  # not our T2DiffCausal's (t2diff-causal*.yaml)
             and "paper-scale" not in p.parts}  # written in the current layout: tests/test_paper_scale.py
    assert found == set(OLD_CONFIGS) == set(PAPER_ROWS)


@pytest.mark.parametrize("name", sorted(OLD_CONFIGS))
def test_old_flat_config_equals_the_converted_one(name: str) -> None:
    path = REPO / "configs" / name
    new, old = load_config(path), experiment_from_dict(copy.deepcopy(OLD_CONFIGS[name]))
    assert (new.data, new.train, new.eval) == (old.data, old.train, old.eval)
    assert model_config(new) == model_config(old)
    assert isinstance(new.model["diffusion"], dict) and not set(new.model) & (set(LEGACY_KEYS) - {"diffusion"})
    assert T2Diff.paper_row(model_config(new)) == PAPER_ROWS[name]
    header = path.read_text().splitlines()
    assert header[0].startswith("#") and any("Command:" in line for line in header[:4])


def test_old_checkpoint_config_builds_the_same_model() -> None:
    """A checkpoint stores the flat model section (ck["config"]["model"]): same config, same parameters."""
    old = experiment_from_dict({"model": {"name": "t2diff", "hidden": 16, "steps": 3, "unet_levels": 2,
                                          "session_len": 4, "session_ffn_dim": 32, "din_hidden": 16}})
    new = experiment_from_dict({"model": {"name": "t2diff", "hidden": 16, "diffusion": {"steps": 3},
                                          "unet": {"levels": 2}, "attention": {"session_len": 4, "ffn_dim": 32,
                                                                                "din_hidden": 16}}})
    assert model_config(old) == model_config(new)
    from t2diff.models.base import DataInfo

    info = DataInfo(num_items=30, num_users=5, max_len=8)
    torch.manual_seed(0)
    a = T2Diff(model_config(old), info).state_dict()
    torch.manual_seed(0)
    b = T2Diff(model_config(new), info).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# the README's documented switches: the flat override and its nested form give the same config
README_SWITCHES = [
    ("model.diffusion=false", "model.diffusion.enabled=false"),
    ("model.drift=false", "model.diffusion.drift=false"),
    ("model.schedule=linear", "model.diffusion.schedule=linear"),
    ("model.steps=10", "model.diffusion.steps=10"),
    ("model.kl_weight=1.0", "model.objective.kl_weight=1.0"),
    ("model.kl_loss=l2", "model.objective.kl_loss=l2"),
    ("model.reverse_noise=var", "model.diffusion.reverse_noise=var"),
    ("model.kl_positions=last", "model.objective.kl_positions=last"),
]


@pytest.mark.parametrize(("flat", "nested"), README_SWITCHES)
def test_readme_switches_on_the_nested_yaml(flat: str, nested: str) -> None:
    path = REPO / "configs/ml-1m/t2diff.yaml"
    a, b = _load(flat, path=path), _load(nested, path=path)
    assert a == b != _load(path=path)


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.diffusion.schedule=cubic"], "model.diffusion.schedule: 'cubic' is not one of exp, linear, log"),
    (["model.schedule=cubic"], "model.diffusion.schedule: 'cubic' is not one of exp, linear, log"),
    (["model.diffusion.sampler=dpm"], "model.diffusion.sampler: 'dpm' is not one of ddpm, ddim"),
    (["model.diffusion.inference_steps=5"], "model.diffusion.inference_steps: the ddpm sampler visits all T = 50"),
    (["model.diffusion.sampler=ddim", "model.diffusion.inference_steps=51"],
     "model.diffusion.inference_steps: the ddim sampler visits 1..T = 50 steps, got 51"),
    (["model.reverse_noise=sigma"], "model.diffusion.reverse_noise: 'sigma' is not one of std, var"),
    (["model.objective.kl_loss=l1"], "model.objective.kl_loss: 'l1' is not one of mse, l2"),
    (["model.kl_positions=first"], "model.objective.kl_positions: 'first' is not one of all, last"),
    (["model.unet.padding=mirror"], "model.unet.padding: 'mirror' is not one of zeros, reflect, replicate, circular"),
    (["model.unet_time_emb=learned"], "model.unet.time_emb: 'learned' is not one of sinusoidal, authors"),
    (["model.diffusion.steps=0"], "model.diffusion.steps: must be >= 1, got 0"),
    (["model.steps=0"], "model.diffusion.steps: must be >= 1, got 0"),
    (["model.diffusion.steps=ten"], "model.diffusion.steps: expected int, got 'ten'"),
    (["model.unet.levels=0"], "model.unet.levels: must be >= 1, got 0"),
    (["model.hidden=0"], "model.hidden: must be >= 1, got 0"),
    (["model.attention.time_buckets=0"], "model.attention.time_buckets: must be >= 1, got 0"),
    (["model.diffusion.max_beta=1.5"], "model.diffusion.max_beta: must lie in (0, 1), got 1.5"),
    (["model.attention.dropout=1.5"], "model.attention.dropout: must lie in [0, 1], got 1.5"),
    (["model.attention.heads=3"], "model.attention.heads: 3 does not divide model.hidden=64"),
    (["model.num_heads=5", "model.hidden=16"], "model.attention.heads: 5 does not divide model.hidden=16"),
    (["model.unet.final_proj=false", "model.unet.base_channels=32"],
     "model.unet.final_proj: false needs model.unet.base_channels 0 or model.hidden (64), got 32"),
    (["model.diffusion.stepz=3"], "model.diffusion: unknown key(s) ['stepz']"),
    (["model.stepz=3"], "model: unknown key(s) ['stepz']"),
])
def test_bad_values_name_the_dotted_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load(*overrides)
    assert message in str(e.value)


def test_python_construction_is_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"model\.diffusion\.schedule: 'cubic' is not one of exp, linear, log"):
        T2DiffConfig(diffusion={"schedule": "cubic"})
    with pytest.raises(ConfigError, match=r"model\.diffusion\.steps: must be >= 1"):
        DiffusionConfig(steps=0)
    with pytest.raises(ConfigError, match=r"model\.unet\.padding"):
        UNetConfig(padding="mirror")
    with pytest.raises(ConfigError, match=r"model\.attention\.heads: 3 does not divide model\.hidden=16"):
        T2DiffConfig(hidden=16, attention=AttentionConfig(heads=3))
    with pytest.raises(ConfigError, match=r"model\.objective: expected a mapping"):
        T2DiffConfig(objective=3)
    with pytest.raises(TypeError, match="unknown key"):
        T2DiffConfig(stepz=3)
    ok = T2DiffConfig(hidden=16, objective=ObjectiveConfig(kl_weight=0.5), unet={"levels": 2}, steps=4)
    assert (ok.objective.kl_weight, ok.unet.levels, ok.diffusion.steps) == (0.5, 2, 4)
    assert dataclasses.asdict(ok)["diffusion"]["steps"] == 4 and copy.deepcopy(ok) == ok
